"""Standard benchmarks, offline: the OLMES suite's tasks (HellaSwag, ARC, PIQA, LAMBADA, ...)
scored as lm-evaluation-harness scores them (gptcore.benchmark.score), summed up per task and as a
CORE-like aggregate (gptcore.benchmark.report). The `benchmark` stage and `gptcore benchmark` run it."""
