"""The training loop and what it is built from: config, record types, learner, weight sync, checkpoints, metrics."""
