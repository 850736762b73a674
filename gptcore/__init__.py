"""gptcore: train GPT language models from scratch, reproducibly, as a DVC pipeline."""

__version__ = "0.1.0"
