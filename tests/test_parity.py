"""Our train step against the released MuMMI code's numbers, without TensorFlow.

`tests/data/parity_small.npz` holds what the released TensorFlow code computed (through
`python -m experiments.parity`, docs/PARITY.md) at the small parity size for 10 updates:
every term of the first update (experts, PoE output, every posterior and prior state,
KL, reward, each InfoNCE, g(z), the imagined trajectory, lambda-returns, actor and value
losses, every gradient tensor and per-module gradient norms), the losses and gradient
norms of all 10 updates, and every parameter after the first and the last. Large arrays
are kept as digests (`harness.digest`). The inputs are not stored: the weights, batches
and noise are regenerated from the fixture's seed exactly as the harness made them.

Regenerate (needs the reference checkout and a TensorFlow environment):

    python -m experiments.parity --reference=PATH/TO/MuMMI --tf_python=PATH/TO/python \
        --size=small --steps=10 --out=runs/parity/small --fixture=tests/data/parity_small.npz
"""

import json
import os

import numpy as np
import pytest

from experiments.parity import harness

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "parity_small.npz")


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        meta = json.loads(str(data["meta"]))
        ref = {k[4:]: data[k] for k in data.files if k.startswith("ref/")}
    return meta, ref


@pytest.mark.slow
def test_our_train_step_matches_the_released_code_term_by_term(fixture):
    meta, ref = fixture
    cfg, agent, weights, batches, noise = harness.make_inputs(
        meta["size"], meta["steps"], meta["weights"], meta["batch"], meta["seed"]
    )
    ours = harness.run_ours(agent, weights, batches, noise)
    ours.update(harness.module_grad_norms(ours))
    rows = harness.compare(harness.digest(ours), ref)
    assert len(rows) >= 500, len(rows)  # every term, gradient and parameter is compared
    terms = {r["term"] for r in rows}
    for must in ("step1/term/returns", "step1/term/post/stoch", "step10/term/model_loss"):
        assert must in terms
    failed = [r for r in rows if not r["ok"]]
    assert not failed, harness.table_markdown(failed[:30], f"{len(failed)} terms off")
