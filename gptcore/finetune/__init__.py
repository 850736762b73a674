"""Fine-tuning: the shared loop, the data readers, the classifier and the instruction model."""
