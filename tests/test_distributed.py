"""Multi-host helpers: seed partition, and a real 2-process CPU job on localhost.

The 2-process test starts this file twice as a script (process 0 and 1, 2 fake CPU devices
each, coordinator on 127.0.0.1 at a free port); each process joins the job with
`distributed.initialize`, runs its `local_seeds` as a SeedParallel sub-sweep over its local
devices and checks it against single runs (test_parallel.run_case), printing JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))

from mummi_jax import distributed  # noqa: E402
from tests.xla_flags import with_flags  # noqa: E402

ALL_SEEDS = [11, 12, 13, 14, 15]
DEVICES_PER_PROCESS = 2


@pytest.mark.parametrize("num_seeds,count", [(5, 2), (8, 2), (3, 4), (1, 3), (0, 2), (9, 4)])
def test_local_seeds_partition(num_seeds, count):
    seeds = [100 + 3 * i for i in range(num_seeds)]
    blocks = [distributed.local_seeds(seeds, i, count) for i in range(count)]
    assert sum(blocks, []) == seeds  # contiguous blocks, in order, covering everything once
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_local_seeds_errors_and_single_process_default():
    with pytest.raises(ValueError, match="not in"):
        distributed.local_seeds([0, 1], 2, 2)
    with pytest.raises(ValueError, match="duplicate"):
        distributed.local_seeds([0, 0], 0, 1)
    assert distributed.local_seeds([4, 5, 6]) == [4, 5, 6]  # this process is alone


def test_initialize_validates_arguments():
    with pytest.raises(ValueError, match="num_processes and process_id"):
        distributed.initialize("127.0.0.1:1", num_processes=2)
    with pytest.raises(ValueError, match="not in"):
        distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)


def test_flags_without_coordinator_leave_jax_alone():
    from absl import flags

    fv = flags.FlagValues()
    distributed.define_flags(fv)
    fv(["prog"])
    assert fv.coordinator_address is None and not fv.distributed
    assert distributed.initialize_from_flags(fv) is False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_cpu_sweep():
    """Two local processes form one JAX job and each runs its own seeds on its own devices."""
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": with_flags(f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"),
        "JAX_PLATFORMS": "cpu",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(pid), str(port)],
            env=env,
            cwd=TESTS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=90)
            assert proc.returncode == 0, stderr[-4000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    from test_parallel import _check

    assert [o["seeds"] for o in outs] == [[11, 12, 13], [14, 15]]
    for pid, out in enumerate(outs):
        assert out["process_count"] == 2 and out["process_index"] == pid
        assert out["device_count"] == 2 * DEVICES_PER_PROCESS
        assert out["local_device_count"] == DEVICES_PER_PROCESS
        result = out["result"]
        assert result["device_processes"] == [pid]  # its sub-sweep ran on its own devices only
        _check(result, DEVICES_PER_PROCESS, len(out["seeds"]))


if __name__ == "__main__":
    # Worker: argv = process_id, port. Joins the job before any other JAX use.
    import jax

    pid, port = int(sys.argv[1]), int(sys.argv[2])
    distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    from test_parallel import run_case

    seeds = distributed.local_seeds(ALL_SEEDS)
    out = {
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "seeds": seeds,
        "result": run_case(DEVICES_PER_PROCESS, len(seeds), seeds=seeds, train_steps=2),
    }
    distributed.shutdown()
    print(json.dumps(out))
