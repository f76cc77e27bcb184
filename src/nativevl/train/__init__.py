"""Training: losses, the trainer and its stages, distribution, checkpoints."""
