"""The entry points' XLA:CPU flag (mummi_jax.xla_cpu): added once, never over the user's."""

import os
import subprocess
import sys

from mummi_jax import xla_cpu

FLAG = "--xla_cpu_use_fusion_emitters"


def test_the_loop_emitter_is_added_to_what_the_user_set_and_only_once():
    out = xla_cpu.with_loop_emitter("--xla_force_host_platform_device_count=2", {}, "0.10.2")
    assert out == f"--xla_force_host_platform_device_count=2 {FLAG}=false"
    assert xla_cpu.with_loop_emitter(out, {}, "0.10.2") == out
    assert xla_cpu.loop_emitter_requested(out)


def test_the_user_s_choice_and_unmeasured_jaxlibs_keep_xla_s_default():
    mine = f"{FLAG}=true"
    assert xla_cpu.with_loop_emitter(mine, {}, "0.10.2") == mine  # named by the user
    assert not xla_cpu.loop_emitter_requested(mine)
    opted_out = {"MUMMI_JAX_XLA_EMITTERS": "fusion"}
    assert xla_cpu.with_loop_emitter("", opted_out, "0.10.2") == ""
    # XLA aborts on a flag it does not know: a jaxlib it was not measured on gets nothing.
    assert xla_cpu.with_loop_emitter("", {}, "0.11.0") == ""
    assert not xla_cpu.loop_emitter_requested("")


def test_an_entry_point_process_has_the_loop_emitter_in_xla_flags_before_jax_starts():
    # What `python -m experiments.<name>` gets: the flag in XLA_FLAGS before JAX starts, and
    # nothing changed once a backend exists (XLA read its flags then).
    code = (
        "import experiments, os, jax; jax.devices();"
        "from mummi_jax import xla_cpu; print(os.environ['XLA_FLAGS']);"
        "print(xla_cpu.use_loop_emitter())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MUMMI_JAX_XLA_EMITTERS")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    flags, again = out.stdout.split("\n")[:2]
    assert flags == f"{FLAG}=false" and again == "False"
