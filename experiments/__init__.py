"""absl entry points: train, evaluate, sweep, benchmark, compare, toy_latent, toy_probe, parity, ...

Importing this package (every `python -m experiments.<name>` does, before JAX allocates
anything) asks glibc to keep freed memory (`mummi_jax.host_memory`): the paper-size update on
a CPU otherwise pays a third of its time in page faults. `MUMMI_JAX_MALLOPT=0` turns it off.
"""

from mummi_jax.host_memory import keep_freed_memory

keep_freed_memory()
