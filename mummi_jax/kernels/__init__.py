"""Compiled kernels that XLA calls through its FFI (optional; pure-JAX forms are the fallback)."""
