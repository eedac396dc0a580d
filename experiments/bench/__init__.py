"""One module per `experiments.benchmark --what=...`."""
