"""glibc told to keep freed memory: a freed block is reused without faulting it in, also one
over 2 GiB (the paper-size update's temporaries are several GB)."""

import json
import subprocess
import sys

import pytest

from mummi_jax import host_memory

PROBE = r"""
import json, os, resource, sys
from mummi_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "1" else False
import numpy as np
def faults_of_one_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(int(sys.argv[2]) * 2**20, np.uint8); a[::4096] = 1; del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_block()
print(json.dumps({"applied": applied, "faults": min(faults_of_one_block() for _ in range(3))}))
"""


def _probe(on: bool, mb: int = 256) -> dict:
    # Small pages (numpy would ask for huge ones), so that faults count pages.
    env = {"MUMMI_JAX_MALLOPT": "1", "NUMPY_MADVISE_HUGEPAGE": "0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if on else "0", str(mb)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_stay_mapped_with_keep_freed_memory_and_not_without():
    kept, default = _probe(True), _probe(False)
    assert kept["applied"] is True
    # 256 MB is 65,536 pages: glibc unmaps such a block on free, so it faults in again each
    # time; kept, it is reused as it is.
    assert default["faults"] > 30_000, default
    assert kept["faults"] < 1_000, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_over_2_gib_is_kept_too():
    # mallopt takes an int: a trim threshold of 2**31 - 1 still gave blocks over 2 GiB back to
    # the kernel on free (0.53 M faults on every second update at B=16); -1 disables trimming.
    kept = _probe(True, mb=2300)
    assert kept["applied"] is True
    assert kept["faults"] < 1_000, kept


SETTLE = r"""
import json, threading
from mummi_jax import host_memory
host_memory.keep_freed_memory()
import numpy as np
before = host_memory.bytes_in_use()
# 512 MiB held, then freed 50 ms later on another thread: as XLA:CPU frees a finished
# call's temporaries just after the host has seen its outputs.
held = [np.ones(2**29, np.uint8)]
threading.Timer(0.05, held.clear).start()
waited = host_memory.settle(before)
freed = host_memory.bytes_in_use() - before
idle = host_memory.settle(host_memory.bytes_in_use())
with host_memory.settling():  # the same, as the runner writes it
    held.append(np.ones(2**29, np.uint8))
    threading.Timer(0.05, held.clear).start()
freed_in_block = host_memory.bytes_in_use() - before
print(json.dumps({"waited": waited, "freed": freed, "idle": idle, "block": freed_in_block}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_settle_waits_for_memory_another_thread_frees():
    env = {"MUMMI_JAX_MALLOPT": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", SETTLE], capture_output=True, text=True, check=True, env=env
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0.04 <= out["waited"] < 0.25, out  # until the free, well before the timeout
    assert out["freed"] < 2**27, out  # the 512 MiB were back when it returned
    assert out["idle"] == 0.0, out  # nothing held: no wait
    assert out["block"] < 2**27, out


def test_settle_is_a_no_op_without_keep_freed_memory():
    env = {"MUMMI_JAX_MALLOPT": "0", "PATH": "/usr/bin:/bin"}
    code = (
        "from mummi_jax import host_memory as h; h.keep_freed_memory(); "
        "print(h.bytes_in_use(), h.settle(0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["None", "0.0"]


def test_settling_reads_the_heap_only_around_calls_with_temporaries_worth_waiting_for(
    monkeypatch,
):
    # Each read walks the heap's free lists: 4-14 ms on a tiny run's heap, a tenth of its
    # 5-update call. A tiny train step holds 20-26 MB of temporaries, a paper-size one 4.2 GB.
    reads = []
    monkeypatch.setattr(host_memory, "bytes_in_use", lambda: reads.append(1))
    with host_memory.settling(temp_bytes=26 * 2**20):
        pass
    assert reads == []
    with host_memory.settling(temp_bytes=4 * 2**30):
        pass
    assert len(reads) == 2  # before the call, and settle()'s after it
    with host_memory.settling():  # not known: read, as before
        pass
    assert len(reads) == 4
