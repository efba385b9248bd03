"""Training: the configuration, the one loop (one process or torchrun), losses, the frozen-backbone feature cache."""
