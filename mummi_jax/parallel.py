"""Seed-parallel sweeps: one configuration, S seeds, one compiled train step and acting step.

Seeds of one configuration are independent runs. `SeedParallel` stacks their states on a leading
seed axis, `vmap`s the agent's pure train and acting functions over it, and shards that axis
over a 1-D device mesh ``("seed",)`` with `NamedSharding` (docs/notes/performance.md sec. 3.3:
`jit(vmap(step))` in Auto mode; `pmap` is in maintenance mode on JAX 0.10 and needs S equal to
the device count). One run's batch is never split across devices: MuMMI's contrastive
negatives are the whole batch, and per-device negatives would change the loss.

Agent requirements (besides the Agent API of docs/ARCHITECTURE.md):

- ``agent.init(key) -> state`` and ``agent.initial_carry(n) -> carry``, as for a single run;
- ``agent.train_fn(state, batches) -> (state, metrics)``: the **un-jitted** pure function that
  ``agent.train`` jits (batches ``(K, B, T, ...)``, metrics a flat dict of scalars);
- ``agent.act_fn(state, carry, obs, key, training) -> (action, carry)``: the **un-jitted** pure
  function that ``agent.act`` jits; ``training`` is a bool scalar, traced: collection and
  evaluation share one compiled acting program.

The sweep jits ``vmap(train_fn)`` itself, so it compiles once for all seeds; vmapping the
already-jitted methods would also work but would hide the donation and shardings from us.
It jits with `mummi_jax.prng.jit` (classic threefry); an agent whose single runs should match
its sweeps jits its own methods the same way, as `Agent` does.

Padding: with D devices (at most S are used) the seed axis is padded to P = ceil(S / D) * D rows;
rows S..P-1 are copies of seed S-1, computed and thrown away. Device-resident trees (the stacked
state and the stacked carry) keep all P rows between calls, so no step re-pads them; everything
returned to the host (metrics, actions) has exactly S rows, and everything the host passes in
(batches, observations, keys) has S rows and is padded here. Inputs travel through host memory
straight to the device that owns their rows (`jax.make_array_from_callback`), so pass NumPy
replay batches and observations (or what `shard` / `shard_rows` placed already, e.g. on a
prefetch thread); other JAX arrays are fetched first.

No collectives: every compiled program here is row-parallel (each device computes its own rows
and nothing else), and its outputs stay seed-sharded. The host reads results by copying each
array's shards once (`fetch`, `jax.device_get`) and splits rows in NumPy. Indexing a sharded
array per seed instead (``x[i]``) runs a small cross-device program per seed and per leaf, whose
all-reduce makes every device wait for the slowest; on an oversubscribed CPU XLA aborted the
whole process after 40 s of such a wait (tests/test_runner.py runs a 4-device sweep beside busy
processes, and checks the compiled steps hold no collective).

Equivalence: seed s of a sweep computes what a single run with ``seed_key(s)`` computes. The
init is bitwise identical (it calls ``agent.init`` per seed); train and act agree to float
tolerance on CPU, since batched and unbatched GEMMs may reduce in a different order
(tests/test_parallel.py checks 1, 4 and 8 devices, divisible and not). A single run is this
with S = 1 (`mummi_jax.runner`).

Typical host loop (one environment instance per seed, one logdir per seed)::

    sweep = SeedParallel(agent, num_seeds=len(seeds))
    state = sweep.init(seeds)                          # (P, ...) sharded, donated by train
    carry = sweep.initial_carry(1)                     # (P, 1, ...) sharded, donated by act
    action, carry = sweep.act(state, carry, obs, keys, training=True)  # obs (S, 1, ...)
    state, metrics = sweep.train(state, batches)       # batches (S, K, B, T, ...)
    host = sweep.fetch(state)                          # NumPy, (S, ...), for checkpoints
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mummi_jax import prng
from mummi_jax.device_memory import explain_out_of_memory

SEED_AXIS = "seed"
_REQUIRED = ("init", "initial_carry", "train_fn", "act_fn")

PyTree = Any


def seed_key(seed: int) -> jax.Array:
    """Root PRNG key of the run with integer `seed`: a typed key of shape ().

    Single runs and sweeps must both derive everything from this key (``agent.init(seed_key(s))``
    and, for acting, keys folded from it), so that seed s of a sweep equals a single run of s.
    """
    return jax.random.key(int(seed))


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack S pytrees of equal structure on a new leading axis: leaves (...) -> (S, ...).

    NumPy leaves stay NumPy (host replay data), anything else becomes a JAX array.
    """
    if not trees:
        raise ValueError("stack() needs at least one tree")

    def _stack(*xs):
        if all(isinstance(x, np.ndarray | np.generic) for x in xs):
            return np.stack(xs)
        return jnp.stack(xs)

    return jax.tree.map(_stack, *trees)


def unstack(tree: PyTree, i: int) -> PyTree:
    """Row `i` of every leaf of a stacked pytree: leaves (S, ...) -> (...).

    For host trees (NumPy) and tests. A device-resident, seed-sharded tree is read with
    `SeedParallel.fetch` (one copy per leaf) instead: indexing it runs a program per row.
    """
    return jax.tree.map(lambda x: x[i], tree)


def seed_devices(num_seeds: int, devices: Sequence[jax.Device] | None = None) -> int:
    """D = min(S, devices): how many devices the seed axis is sharded over (default devices:
    `jax.local_devices()`)."""
    return min(len(jax.local_devices() if devices is None else devices), int(num_seeds))


def seeds_per_device(num_seeds: int, devices: Sequence[jax.Device] | None = None) -> int:
    """Rows of the seed axis each device computes: ceil(S / D) with D = `seed_devices`.

    Above 1, a device runs a vmapped batch of seeds; the runner then builds its agent with
    `config.resolve_conv_impl(..., seeds_per_device)`, which avoids grouped convolutions.
    """
    return -(-int(num_seeds) // max(seed_devices(num_seeds, devices), 1))


class SeedParallel:
    """Runs `num_seeds` independent copies of `agent` as one vmapped, seed-sharded program.

    Args:
      agent: an Agent exposing ``init``, ``initial_carry``, ``train_fn`` and ``act_fn`` (see the
        module docstring).
      num_seeds: S, the number of seeds in the sweep.
      devices: devices to shard the seed axis over; default ``jax.local_devices()`` (so in a
        multi-process job each process runs its own sub-sweep, see `mummi_jax.distributed`).
        At most S of them are used: a device with only dummy rows would do wasted work.

    Attributes:
      num_seeds: S.
      padded_seeds: P, the leading size of the device-resident state and carry.
      devices, mesh, sharding (seed axis over "seed").
      traces: Counter of traces per step function ("train", "act").
    """

    def __init__(self, agent, num_seeds: int, devices: Sequence[jax.Device] | None = None):
        missing = [name for name in _REQUIRED if not callable(getattr(agent, name, None))]
        if missing:
            raise TypeError(
                f"SeedParallel needs agent.{', agent.'.join(missing)}: the sweep vmaps the "
                "agent's un-jitted pure train_fn/act_fn (see mummi_jax/parallel.py)"
            )
        if num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("no devices given")
        self.agent = agent
        self.num_seeds = int(num_seeds)
        self.devices = devices[: min(len(devices), self.num_seeds)]
        self.padded_seeds = seeds_per_device(self.num_seeds, devices) * len(self.devices)
        # Row r of the padded axis holds seed min(r, S-1): dummies repeat a real seed so that
        # they stay finite and cost the same as a real row.
        self._rows = np.minimum(np.arange(self.padded_seeds), self.num_seeds - 1)
        # Auto axis type: JAX 0.10's make_mesh defaults to Explicit, which changes typing rules.
        self.mesh = Mesh(np.array(self.devices), (SEED_AXIS,), axis_types=(AxisType.Auto,))
        self.sharding = NamedSharding(self.mesh, P(SEED_AXIS))

        train_fn = agent.train_fn

        def train(state, batches, active):
            self.traces["train"] += 1  # runs at trace time only

            def one(state, batch, on):
                new, metrics = train_fn(state, batch)
                # A row sitting this call out keeps its state (selected inside the step: no
                # host round trip, one program whatever the mask).
                return jax.tree.map(lambda n, o: jnp.where(on, n, o), new, state), metrics

            return jax.vmap(one)(state, batches, active)

        sh = self.sharding
        # Outputs stay seed-sharded: slicing off the dummy rows here would gather them onto
        # every device (a collective); the host drops them after its one copy instead.
        self._train = prng.jit(
            train, in_shardings=(sh, sh, sh), out_shardings=(sh, sh), donate_argnums=0
        )
        self._act: Callable | None = None
        # Traces per step function; each should stay 1 for the whole sweep (tests, logs).
        self.traces: collections.Counter[str] = collections.Counter()

    # ----------------------------------------------------------------- placement helpers

    def _check_rows(self, x, what: str) -> None:
        if np.ndim(x) == 0 or np.shape(x)[0] != self.num_seeds:
            raise ValueError(
                f"{what}: every leaf needs a leading seed axis of size {self.num_seeds}, "
                f"got shape {np.shape(x)}"
            )

    def _placed(self, x) -> bool:
        """Already padded and placed by `shard` (e.g. on the prefetch thread)."""
        return (
            isinstance(x, jax.Array)
            and x.sharding == self.sharding
            and np.shape(x)[:1] == (self.padded_seeds,)
        )

    def _put_leaf(self, x, what: str) -> jax.Array:
        if self._placed(x):
            return x
        self._check_rows(x, what)
        # Everything goes through host memory and lands on each device as its own rows: a
        # device_put of a one-device array to the seed sharding would compile a slicing program
        # per leaf shape, and a real agent state has many shapes.
        if _is_key(x):
            data = self._put_host(np.asarray(jax.device_get(jax.random.key_data(x))))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return self._put_host(np.asarray(jax.device_get(x)))

    def _put_host(self, x: np.ndarray) -> jax.Array:
        """(S, ...) host array -> (P, ...) seed-sharded array; dummy rows repeat seed S-1."""
        rows = self._rows

        def shard(index):
            # Each device receives only its rows; a view unless the shard holds dummies.
            r = rows[index[0]]
            if r[-1] < self.num_seeds and np.all(np.diff(r) == 1):
                return x[r[0] : r[-1] + 1]
            return x[r]

        shape = (self.padded_seeds,) + x.shape[1:]
        return jax.make_array_from_callback(shape, self.sharding, shard)

    def _put_rows(self, xs: Sequence[np.ndarray]) -> jax.Array:
        """S host arrays (...) -> one (P, ...) seed-sharded array, stacked per device only."""
        rows = self._rows

        def shard(index):
            r = rows[index[0]]
            return xs[r[0]][None] if len(r) == 1 else np.stack([xs[j] for j in r])

        shape = (self.padded_seeds,) + np.shape(xs[0])
        return jax.make_array_from_callback(shape, self.sharding, shard)

    def shard(self, tree: PyTree, what: str = "tree") -> PyTree:
        """Pad and place host or device data: leaves (S, ...) -> sharded (P, ...). Leaves that
        `shard` already placed pass through."""
        return jax.tree.map(lambda x: self._put_leaf(x, what), tree)

    def shard_rows(self, trees: Sequence[PyTree]) -> PyTree:
        """S host trees of equal structure -> one tree of sharded (P, ...) leaves, each device's
        rows stacked straight from the S trees (no S-row copy on the host)."""
        if len(trees) != self.num_seeds:
            raise ValueError(f"expected {self.num_seeds} trees, got {len(trees)}")

        def put(*xs):
            if _is_key(xs[0]):
                data = [np.asarray(jax.device_get(jax.random.key_data(x))) for x in xs]
                return jax.random.wrap_key_data(
                    self._put_rows(data), impl=jax.random.key_impl(xs[0])
                )
            return self._put_rows([np.asarray(jax.device_get(x)) for x in xs])

        return jax.tree.map(put, *trees)

    def put_states(self, states: Sequence[PyTree]) -> PyTree:
        """S per-seed states (e.g. restored checkpoints) -> the stacked, sharded (P, ...) state."""
        if len(states) != self.num_seeds:
            raise ValueError(f"expected {self.num_seeds} states, got {len(states)}")
        return self.shard_rows(states)

    def fetch(self, stacked: PyTree) -> PyTree:
        """A device-resident stacked tree -> NumPy leaves (S, ...), dummy rows dropped; typed
        PRNG keys become their raw uint32 key data (S, ...). One host copy per leaf: no program
        per seed, no collective (see the module docstring)."""
        raw = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, stacked)
        return jax.tree.map(lambda x: np.asarray(x)[: self.num_seeds], jax.device_get(raw))

    def states(self, stacked_state: PyTree) -> list[PyTree]:
        """The stacked state -> list of S per-seed states (NumPy leaves, typed keys as keys)."""
        host = self.fetch(stacked_state)

        def row(i):
            return jax.tree.map(
                lambda t, x: (
                    jax.random.wrap_key_data(x[i], impl=jax.random.key_impl(t))
                    if _is_key(t)
                    else x[i]
                ),
                stacked_state,
                host,
            )

        return [row(i) for i in range(self.num_seeds)]

    # ----------------------------------------------------------------- Agent API, stacked

    def init(self, seeds: Sequence[int] | None = None) -> PyTree:
        """Stacked initial state, leaves (P, ...) sharded over "seed".

        Row s is exactly ``agent.init(seed_key(seeds[s]))``; ``seeds`` defaults to 0..S-1.
        """
        seeds = list(range(self.num_seeds)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != self.num_seeds:
            raise ValueError(f"expected {self.num_seeds} seeds, got {seeds}")
        return self.put_states([self.agent.init(seed_key(s)) for s in seeds])

    def initial_carry(self, n_per_seed: int) -> PyTree:
        """Stacked acting carry for `n_per_seed` envs per seed: leaves (P, n, ...), sharded."""
        carry = jax.device_get(self.agent.initial_carry(n_per_seed))
        return self.shard_rows([carry] * self.num_seeds)

    def train(
        self, stacked_state: PyTree, stacked_batches: PyTree, active=None
    ) -> tuple[PyTree, dict]:
        """K updates for every seed in one compiled call.

        Args:
          stacked_state: (P, ...) from `init`/`put_states`/`train`; **donated** (do not reuse).
          stacked_batches: dict of (S, K, B, T, ...) NumPy arrays (e.g. `stack` of the S replay
            samples), or their `shard`; seed s's rows are what its single run would pass to
            ``agent.train``.
          active: optional (S,) bools: rows that update; the others keep their state (their
            batch rows are computed and thrown away). Default: every row.

        Returns:
          (stacked_state (P, ...), metrics: dict name -> (S,) NumPy array).
        """
        batches = self.shard(stacked_batches, "batches")
        active = np.ones(self.num_seeds, bool) if active is None else np.asarray(active, bool)
        mask = self._put_host(active.reshape(self.num_seeds))
        per_device = self.padded_seeds // len(self.devices)
        with explain_out_of_memory(
            f"the train step of {per_device} seed(s) per device",
            "run fewer seeds per device (more devices, or split --seeds over several commands), "
            "lower train.batch or train.length, or set model.precision=bfloat16; with several "
            "seeds per device `model.conv_impl=auto` takes the matmul convolutions, whose "
            "patches double the encoders' memory (--set model.conv_impl=xla keeps cuDNN's)",
        ):
            stacked_state, metrics = self._train(stacked_state, batches, mask)
            return stacked_state, self.fetch(metrics)

    def lower_train(self, stacked_state: PyTree, stacked_batches: PyTree):
        """The train step lowered for these (concrete or `jax.ShapeDtypeStruct`) inputs, for
        inspection or ahead-of-time compilation (benchmarks). Its compiled form takes
        `(stacked_state, placed batches, placed (S,) active mask)`: see `train`."""
        active = jax.ShapeDtypeStruct((self.padded_seeds,), jnp.bool_, sharding=self.sharding)
        return self._train.lower(stacked_state, stacked_batches, active)

    def train_temp_bytes(self, stacked_state: PyTree, stacked_batches: PyTree) -> int | None:
        """Bytes of temporaries one `train` call at these shapes allocates (XLA's memory
        analysis; None where the backend gives none). After the first `train` call the
        compile is a cache hit: a fraction of a millisecond, no new trace."""
        batches = self.shard(stacked_batches, "batches")
        analysis = self.lower_train(stacked_state, batches).compile().memory_analysis()
        return None if analysis is None else int(analysis.temp_size_in_bytes)

    def _act_step(self) -> Callable:
        """The jitted vmapped acting step (built on first use: runs that never act, such as
        train-step benchmarks, never trace it)."""
        if self._act is None:
            act_fn = self.agent.act_fn

            def act(state, carry, obs, keys, training):
                self.traces["act"] += 1  # runs at trace time only
                return jax.vmap(act_fn, in_axes=(0, 0, 0, 0, None))(
                    state, carry, obs, keys, training
                )

            sh = self.sharding
            self._act = prng.jit(
                act,
                in_shardings=(sh, sh, sh, sh, NamedSharding(self.mesh, P())),
                out_shardings=(sh, sh),
                donate_argnums=1,
            )
        return self._act

    def lower_act(self, stacked_state, stacked_carry, stacked_obs, stacked_keys):
        """The acting step lowered for these inputs (placed as `act` places them), for
        inspection: its compiled form serves collection and evaluation alike."""
        obs = self.shard(stacked_obs, "obs")
        keys = self.shard(stacked_keys, "keys")
        flag = jax.ShapeDtypeStruct((), jnp.bool_)
        return self._act_step().lower(stacked_state, stacked_carry, obs, keys, flag)

    def act(
        self,
        stacked_state: PyTree,
        stacked_carry: PyTree,
        stacked_obs: PyTree,
        stacked_keys: jax.Array,
        training: bool = True,
    ) -> tuple[np.ndarray, PyTree]:
        """One policy step for every seed.

        Args:
          stacked_state: (P, ...) state (not donated).
          stacked_carry: (P, n, ...) from `initial_carry`/`act`; **donated**.
          stacked_obs: dict of (S, n, ...) observations incl. flags and is_first, or its
            `shard`/`shard_rows`.
          stacked_keys: (S,) typed keys; row s is the key seed s's single run would pass.
          training: collection (True) or evaluation (False); one program for both.

        Returns:
          (action (S, n, A) NumPy, stacked_carry (P, n, ...) sharded).
        """
        obs = self.shard(stacked_obs, "obs")
        keys = self.shard(stacked_keys, "keys")
        flag = np.asarray(training, np.bool_)
        action, carry = self._act_step()(stacked_state, stacked_carry, obs, keys, flag)
        return self.fetch(action), carry
