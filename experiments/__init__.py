"""absl entry points: train, evaluate, sweep, benchmark, compare, toy_latent, toy_probe, parity, ...

Importing this package (every `python -m experiments.<name>` does, before JAX allocates
anything) asks glibc to keep freed memory (`mummi_jax.host_memory`): the paper-size update on
a CPU otherwise pays a third of its time in page faults. `MUMMI_JAX_MALLOPT=0` turns it off.
It also puts XLA:CPU's loop emitter into `XLA_FLAGS` (`mummi_jax.xla_cpu`): the agents' small
fused kernels compile and run faster with it; `MUMMI_JAX_XLA_EMITTERS=fusion` keeps XLA's
default.
"""

from mummi_jax.host_memory import keep_freed_memory
from mummi_jax.xla_cpu import use_loop_emitter

keep_freed_memory()
use_loop_emitter()
