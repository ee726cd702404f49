"""Training side of bpedge (PyTorch): data, models, losses, training loops, experiments."""
