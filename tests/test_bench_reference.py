"""`--what=reference`'s orchestration, without TensorFlow: a stand-in for the reference's
Python answers the timing protocol (`ready`, then `seconds <s>` per `step`), so that the
process handling, the encoders phase and its ratios are checked on every machine. The real
reference is timed only by the benchmark (BENCHMARKS.md)."""

import stat
import types

import jax
import numpy as np
import pytest
from dm_env import specs

from experiments.bench import reference as ref_bench
from experiments.bench import train_step as ts
from mummi_jax import presets
from mummi_jax.agent import Agent


def _fake_python(tmp_path, body):
    """An executable that stands in for `--tf_python` (it ignores the script and flags)."""
    path = tmp_path / "fake_python"
    path.write_text("#!/usr/bin/env python3\nimport sys\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


ANSWERS = """
print("ready 1.5 0.25", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    print("seconds 0.125", flush=True)
"""


def test_reference_process_speaks_the_protocol_and_closes(tmp_path):
    side = ref_bench.ReferenceProcess(
        "checkout", _fake_python(tmp_path, ANSWERS), "small", decoders=False, part="encoders"
    )
    assert (side.build_seconds, side.second_call_seconds) == ("1.5", "0.25")
    assert [side.step() for _ in range(3)] == [0.125] * 3
    side.close()
    assert side.proc.returncode == 0


def test_reference_process_passes_the_precision_policy_on(tmp_path):
    """`--reference_policy=mixed_bfloat16` reaches the timing script; float32 adds nothing
    (the script's default), so older checkouts of the harness keep working."""
    argv = tmp_path / "argv"
    body = f"open({str(argv)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n" + ANSWERS
    for policy in ("mixed_bfloat16", "float32"):
        side = ref_bench.ReferenceProcess(
            "checkout", _fake_python(tmp_path, body), "paper", False, policy=policy
        )
        side.close()
    bf16, f32 = argv.read_text().splitlines()
    assert bf16.endswith("--size=paper --no_decoders --policy=mixed_bfloat16")
    assert "--policy" not in f32


def test_reference_process_that_does_not_quit_is_killed(tmp_path):
    # TensorFlow can take minutes to exit at the paper size; the figures are read by then.
    hangs = 'print("ready 1 1", flush=True)\nimport time\ntime.sleep(600)\n'
    side = ref_bench.ReferenceProcess("checkout", _fake_python(tmp_path, hangs), "small", True)
    side.close(grace=0.5)
    assert side.proc.returncode is not None and side.proc.returncode < 0  # killed


def test_reference_process_that_dies_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        ref_bench.ReferenceProcess(
            "checkout", _fake_python(tmp_path, 'print("Traceback: no tensorflow")'), "small", True
        )
    dies = 'print("ready 1 1", flush=True)\nsys.stdin.readline()\nsys.exit(3)\n'
    side = ref_bench.ReferenceProcess("checkout", _fake_python(tmp_path, dies), "small", True)
    with pytest.raises(RuntimeError, match="exit 3"):
        side.step()


def test_encoders_phase_places_the_gap(tmp_path):
    """Our encoders timed for real (tiny), the reference's answered 0.125 s: the record's
    ratios follow from the medians and the first phase's update medians."""
    cfg = presets.make_config("mummi", "walker_walk", "tiny")
    spec = ts._spec(cfg.env.image_size, cfg)
    agent = Agent(cfg, spec, specs.BoundedArray((6,), np.float32, -1, 1))
    batch = jax.device_put(ts._batch(agent, spec, 1, 2, 3))
    state = agent.init(jax.random.key(0))
    flags = types.SimpleNamespace(
        reference="checkout",
        tf_python=_fake_python(tmp_path, ANSWERS),
        reference_policy="float32",
    )
    update = {
        "reference_no_decoders_seconds": {"median": 1.0},
        "ours_seconds": {"median": 1.5},
    }
    record = ref_bench._encoders_phase(flags, "small", 3, agent, state, batch, update, 100.0)
    assert record["what"] == "reference/encoders"
    assert record["reference_encoders_seconds"]["all"] == [0.125] * 3
    ours = record["ours_encoders_seconds"]["median"]
    assert 0 < ours < 10 and len(record["ours_encoders_seconds"]["all"]) == 3
    assert record["encoders_ratio"] == pytest.approx(ours / 0.125)
    assert record["rest_ratio"] == pytest.approx((1.5 - ours) / (1.0 - 0.125))
    assert record["encoders_share_of_gap"] == pytest.approx((ours - 0.125) / 0.5)
    flop = record["encoders_dot_gflop"]
    assert flop > 0  # the convolutions' products, read from the compiled HLO
    assert record["reference_encoders_of_gemm"] == pytest.approx(flop / 0.125 / 100.0)
    assert record["ours_encoders_gflops"] == pytest.approx(flop / ours)
