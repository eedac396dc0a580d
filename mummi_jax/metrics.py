"""`metrics.jsonl`: the run's source of truth, one JSON object per line.

Every line has "step" (env steps) and "wall" (seconds since this process started logging);
the other keys are flat `group/name` metrics (`train/return`, `eval/return`, `wm/loss`, ...).
Non-finite values are written as strings ("nan"), which JSON cannot hold as numbers.
"""

from __future__ import annotations

import json
import math
import os
import time

from mummi_jax.checkpoint import atomic_write


class MetricsLog:
    """Appends records to `<logdir>/metrics.jsonl`."""

    def __init__(self, logdir: str):
        self.path = os.path.join(logdir, "metrics.jsonl")
        self.start = time.time()

    def write(self, step: int, values: dict) -> None:
        record = {"step": int(step), "wall": round(time.time() - self.start, 3)}
        for k, v in values.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def trim(self, env_steps: int) -> None:
        """Drops lines written after `env_steps` (the tail of a killed run past the checkpoint
        it resumes from) and lines cut short by a kill, so the file reads as one uninterrupted
        run. Rewritten atomically, and only when something changes."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= env_steps:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue
        if len(keep) != len(lines):
            atomic_write(self.path, "".join(keep).encode())
