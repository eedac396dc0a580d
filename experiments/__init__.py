"""absl entry points: train, evaluate, sweep, benchmark, compare, toy_latent."""
