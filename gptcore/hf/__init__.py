"""Hugging Face interchange: model folders (config.json, safetensors) and tokenizer files, both ways."""
