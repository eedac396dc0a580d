"""XLA_FLAGS for the child processes tests start (tests/conftest.py sets the session's)."""

from __future__ import annotations

import os

OPT_FLAG = "--xla_backend_optimization_level"


def with_flags(*flags: str) -> str:
    """The session's XLA_FLAGS (its code-generation level) plus `flags`, e.g. fake devices."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def default_codegen_env() -> dict:
    """This environment without the session's optimisation level: for a child process that
    trains for minutes (the learning check), where run time, not compile time, dominates."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(OPT_FLAG)]
    return {**os.environ, "XLA_FLAGS": " ".join(flags)}
