"""Code every script shares: data sources, on-device batching and augmentation, the
training loop, checkpoints, pretrained weights, run directories, plots and command-line flags."""
