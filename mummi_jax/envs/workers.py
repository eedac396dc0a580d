"""Environments in spawned worker processes, one env per process.

`spawn` (never `fork`): forking a process that has rendered deadlocks, and dm_control runs a
render thread, so each worker imports the suites fresh and builds its env itself
(environments.md §6, pitfalls 2 and 4). Each worker calls `mummi_jax.envs.make(**kwargs)`
unless its kwargs name another `factory`.

    pool = EnvPool([dict(name="walker_walk", seed=s) for s in range(2)])
    steps = pool.reset_all()              # list of dm_env.TimeStep
    steps = pool.step(actions)            # actions: sequence of (A,) arrays, one per env
    pool.close()

`reseed`, `reset_many` and `step_many` (a subset of the envs) are the interface that
`mummi_jax.episodes.run_episodes` plays through, shared with its in-process `EnvList`.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback

DEFAULT_FACTORY = "mummi_jax.envs:make"


class WorkerError(RuntimeError):
    """An exception raised inside a worker; the message carries the worker's traceback."""


def _worker(conn, make_kwargs):
    # Imported here so the parent process never needs dm_control (and never renders).
    try:
        import importlib

        kwargs = dict(make_kwargs)
        module, _, function = kwargs.pop("factory", DEFAULT_FACTORY).partition(":")
        make = getattr(importlib.import_module(module), function)
        env = make(kwargs.pop("name"), **kwargs)
        conn.send(("ok", (env.observation_spec(), env.action_spec())))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                if command == "reset":
                    result = env.reset()
                elif command == "step":
                    result = env.step(payload)
                elif command == "call":
                    method, args = payload
                    result = getattr(env, method)(*args)
                else:
                    raise ValueError(f"unknown worker command {command!r}")
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass  # parent went away
    finally:
        try:
            env.close()
        except Exception:
            pass
        conn.close()


class EnvPool:
    """N environments, each in its own spawned process; calls run in parallel.

    `make_kwargs_list`: one dict per env with `name` and any `envs.make` options; an optional
    `factory` ("module:function", default `mummi_jax.envs:make`) picks another builder, e.g.
    "mummi_jax.envs.dmc:make" for the bare adapter without the missing-data wrapper.
    """

    def __init__(self, make_kwargs_list, start_timeout: float = 300.0):
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        self._closed = False
        for kwargs in make_kwargs_list:
            if "name" not in kwargs:
                raise ValueError(f"each make_kwargs needs a 'name'; got keys {sorted(kwargs)}")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, dict(kwargs)), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            specs = self._gather(range(len(self._conns)), timeout=start_timeout)
        except BaseException:
            self.close()
            raise
        self.observation_specs = [s[0] for s in specs]
        self.action_specs = [s[1] for s in specs]

    def __len__(self):
        return len(self._conns)

    def _gather(self, indices, timeout=None):
        results = []
        for i in indices:
            conn = self._conns[i]
            if timeout is not None and not conn.poll(timeout):
                raise WorkerError(f"env worker {i} did not answer within {timeout} s")
            try:
                status, payload = conn.recv()
            except EOFError as e:
                code = self._procs[i].exitcode
                raise WorkerError(f"env worker {i} died (exit code {code})") from e
            if status == "error":
                raise WorkerError(f"env worker {i} failed:\n{payload}")
            results.append(payload)
        return results

    def reset(self, i: int):
        """Resets env `i`; returns its first TimeStep."""
        self._conns[i].send(("reset", None))
        return self._gather([i])[0]

    def reset_all(self):
        return self.reset_many(range(len(self)))

    def step(self, actions):
        """One agent step in every env (in parallel); returns a list of TimeStep."""
        if len(actions) != len(self):
            raise ValueError(f"expected {len(self)} actions, got {len(actions)}")
        return self.step_many(range(len(self)), actions)

    def reseed(self, i: int, seed: int) -> None:
        self.call(i, "reseed", int(seed))

    def reset_many(self, indices):
        """Resets envs `indices` (in parallel); returns their first TimeSteps."""
        indices = list(indices)
        for i in indices:
            self._conns[i].send(("reset", None))
        return self._gather(indices)

    def step_many(self, indices, actions):
        """One agent step in envs `indices` (in parallel), `actions` in the same order."""
        indices = list(indices)
        for i, action in zip(indices, actions, strict=True):
            self._conns[i].send(("step", action))
        return self._gather(indices)

    def call(self, i: int, method: str, *args):
        """Calls `env.method(*args)` in worker `i` (e.g. "missing_fraction")."""
        self._conns[i].send(("call", (method, args)))
        return self._gather([i])[0]

    def close(self, timeout: float = 10.0):
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout)
        for conn in self._conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
