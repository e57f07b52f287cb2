"""Training: the epoch loop, metrics, early stopping, checkpoints, logs and plots."""
