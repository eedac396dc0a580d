"""Numerical parity with the released MuMMI code (clear-nus/MuMMI, TensorFlow).

`python -m experiments.parity` runs both implementations on identical weights, batches and
sampling noise and compares them term by term (docs/PARITY.md). Nothing in this package
imports JAX at import time: `reference_side.py` runs in a separate TensorFlow environment
and shares only `mapping.py` (parameter names) with the JAX side.
"""
