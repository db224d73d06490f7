"""segkd training side: models, datasets, losses and the trainer (needs torch)."""
