"""fmnist-batch: train, optimize, benchmark and batch-score Fashion-MNIST CNNs on CPU clusters."""

__version__ = "0.1.0"
