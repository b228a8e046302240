"""``python -m fmnist`` runs the fmnist-batch command line."""

from fmnist.cli import main

main()
