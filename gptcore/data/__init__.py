"""The data path: sources fetched into data/raw, documents read out of files and archives,
the split, encoding, and the token store the trainer reads."""
