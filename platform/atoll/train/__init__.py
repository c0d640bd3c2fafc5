"""Training: the DeepSpeed loop run by Ray Train on one island, and its checkpoints."""
