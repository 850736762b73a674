"""Scaling laws as a pipeline (scaling/dvc.yaml): a grid of training runs, model sizes by compute
budgets (`grid`), and the laws fitted to their losses (`fit`). docs/scaling.md tells the story."""
