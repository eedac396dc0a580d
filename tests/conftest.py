"""Session setup: one persistent XLA compilation cache shared by the whole test session.

Most of the suite's time is XLA compiling tiny agents, and many tests build an Agent equal to
one already compiled (every preset end to end and then evaluated, the single runs a sweep is
checked against, the CLI subprocesses): their programs are the same HLO, and a hit on this
cache replaces the compile. The directory is fresh per session, so no result depends on an
earlier run; child processes inherit it through the environment. A cache the user has
configured (`JAX_COMPILATION_CACHE_DIR`) is used as it is and left in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mummi_jax_test_xla_")
# Cache every compile (JAX's default threshold is 1 s): besides the train and act steps, each
# process lowers small programs (key folding, eager array set-up) that every child process
# (CLI runs, resumes, fake-device sweeps) would otherwise compile again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Level 0 of LLVM for the session (BENCHMARKS.md, "The test suite"): tests compile far more
# than they run. MUMMI_JAX_TEST_OPT=default, or a level already in XLA_FLAGS, keeps the default.
from tests.xla_flags import OPT_FLAG  # noqa: E402

_flags = os.environ.get("XLA_FLAGS", "")
_keep_default = os.environ.get("MUMMI_JAX_TEST_OPT") == "default"
if OPT_FLAG not in _flags and not _keep_default:
    os.environ["XLA_FLAGS"] = f"{_flags} {OPT_FLAG}=0".strip()
# XLA:CPU's loop emitter, as the entry points use it (mummi_jax.xla_cpu): the session compiles
# in half the time at level 0, and child processes inherit it with the rest of XLA_FLAGS.
from mummi_jax.xla_cpu import use_loop_emitter  # noqa: E402

use_loop_emitter()

import jax  # noqa: E402  (after the environment: JAX reads it on import)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (minutes each: the learning check, end-to-end runs in subprocesses)
    run first, each group in its collected order: pytest-xdist hands tests out in this order,
    so the long ones are spread over the workers at the start instead of one of them
    finishing alone at the end of the session."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
