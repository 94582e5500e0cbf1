"""One lean pool of env worker processes for every task, and the rollout engine that keeps them busy.

Rollouts are the experiment's cost, so the engine is built around the simulator, not the policy:

- **Several envs per worker process.** ``num_workers`` processes (default: the CPUs this process may use) each
  host up to ``envs_per_worker`` env *slots*. A slot runs one episode after another, of any task: a worker
  keeps one env per (slot, task, env options) it has been asked for, so one pool serves pick-can and both
  drawers, and a task switch costs nothing after the first.
- **Policy and simulation overlap.** The slots form two halves, each spread over all workers. While the
  workers step one half, the learner runs the policy on the other half's observations, one batched call for
  all of them; then the roles swap. With the policy cheaper than a half's simulation, the workers never wait.
  When one half runs out of episodes (the last wave of a rollout), the other is split in two the same way,
  so the tail overlaps too instead of policy and simulation taking turns.
- **Episodes are independent of scheduling.** Each episode's outcome depends only on its request and the
  policy's per-episode state (``start_episode(slot, request)``: adapters, demonstrators, and a random stream
  seeded from the request), never on which slot ran it or what it was batched with. So the engine returns
  the same trajectories, array for array, as the lockstep engine over a Gymnasium vector env (the ``ray``
  engine, and the reference in tests/test_rollout.py).
- **Lean when idle.** Workers start on the first rollout and :meth:`EnvPool.release` stops them (the sweep
  releases the pool before every training phase); while a rollout runs, torch in this process uses one
  thread, so learner and workers never ask for more cores than there are.

Each worker renders through Mesa's llvmpipe with ``LP_NUM_THREADS=0`` (rasterise on the calling thread):
for 64 px frames its helper threads only add wake-ups, and the workers already occupy every core.

Example::

    from razor_robot.rollout.pool import EnvPool
    with EnvPool("metaworld", {"image_size": 64}) as pool:
        trajectories = pool.rollout(requests, policy)      # requests of any tasks, in any order
        pool.release()                                      # free the workers' memory while training
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from razor_robot.envs.core import VIEWER_KEY as VIEWER
from razor_robot.rollout.episodes import (
    BatchPolicy, EpisodeRequest, Trajectory, episode_success, success_mode_of,
)
from razor_robot.rollout.lockstep import lockstep_rollout

ENGINES = ("subprocess", "ray")
EnvFactory = Callable[..., Any]
"""``factory(task, **env_options) -> gymnasium.Env`` following the task contract (docs/ARCHITECTURE.md)."""


@dataclass
class RolloutTotals:
    """What every pool of this process has simulated so far (the sweep's closing line;
    scripts/bench_sweep.py)."""

    episodes: int = 0
    env_steps: int = 0
    seconds: float = 0.0
    """Wall-clock inside ``EnvPool.rollout``, worker start-up included."""

    def line(self) -> str:
        rate = self.env_steps / self.seconds if self.seconds > 0 else float("nan")
        return (f"rollouts: {self.episodes} episodes, {self.env_steps} env steps in {self.seconds:.0f} s "
                f"({rate:.0f} env-steps/s)")


ROLLOUT_TOTALS = RolloutTotals()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_task_env(task: str, backend: str = "metaworld", **env_options: Any) -> Any:
    """The default env factory: ``razor_robot.envs.make_env``."""
    from razor_robot.envs import make_env

    return make_env(task, backend, **env_options)


# ------------------------------------------------------------------------------------------- the worker


def _options_key(options: dict[str, Any] | None) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)


def _worker_main(conn: Connection, factory: EnvFactory) -> None:
    """Serve batches of per-slot operations until told to close; reply with one result list per batch.

    Operations: ``(slot, "reset", (task, seed, options, env_options))`` and ``(slot, "step", action)``; a step
    may carry the slot's next reset, ``(slot, "step", action, reset_payload)``, run right after the step so
    the slot's next episode is ready without another round trip.
    """
    os.environ.setdefault("LP_NUM_THREADS", "0")
    envs: dict[tuple[int, str, str], Any] = {}
    current: dict[int, Any] = {}

    def reset(slot: int, payload: tuple) -> tuple:
        task, seed, options, env_options = payload
        key = (slot, task, _options_key(env_options))
        if key not in envs:
            envs[key] = factory(task, **(env_options or {}))
        env = current[slot] = envs[key]
        observation, info = env.reset(seed=seed, options=options)
        spec = env.unwrapped.task_spec
        return observation, info, int(spec.horizon), success_mode_of(env)

    try:
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            results = []
            try:
                for op in message[1]:
                    slot, kind = op[0], op[1]
                    if kind == "reset":
                        results.append(("reset", reset(slot, op[2])))
                    else:
                        observation, _, terminated, truncated, info = current[slot].step(op[2])
                        step = (observation, bool(terminated), bool(truncated), info)
                        results.append(("step", step, reset(slot, op[3]) if len(op) > 3 else None))
            except Exception:
                conn.send(("error", traceback.format_exc()))
                continue
            conn.send(("ok", results))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for env in envs.values():
            with contextlib.suppress(Exception):
                env.close()


class _Worker:
    """One env worker process and its end of the pipe."""

    def __init__(self, factory: EnvFactory, index: int):
        context = mp.get_context("spawn")  # torch's threads and an initialised GL display must not be forked
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, factory), daemon=True,
                                       name=f"razor-env-worker-{index}")
        self.process.start()
        child.close()

    def send(self, ops: list[tuple]) -> None:
        self.conn.send(("run", ops))

    def receive(self) -> list[tuple]:
        status, payload = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"env worker {self.process.name} failed:\n{payload}")
        return payload

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("close",))
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


# ------------------------------------------------------------------------------------- the learner side


@dataclass
class _Episode:
    """An episode in progress on one slot."""

    index: int
    """Position of its request in the rollout's request list."""
    request: EpisodeRequest
    horizon: int
    success_mode: str
    instruction: str
    observation: dict[str, np.ndarray]
    images: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    step_success: list[bool] = field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)
    final_success: bool | None = None
    """The env's episode_success at the horizon; None until then."""
    terminate: bool = False
    """The policy asked to end the episode after its latest action (extras["terminate"])."""

    def trajectory(self, keep_images: bool) -> Trajectory:
        success = episode_success(self.step_success, self.success_mode, self.final_success)
        return Trajectory.of(self.request, self.instruction, success,
                             np.stack(self.images) if keep_images else None, np.stack(self.states),
                             np.stack(self.actions), np.asarray(self.step_success, dtype=bool),
                             {k: np.stack(v) for k, v in self.extras.items()})


class Reset(NamedTuple):
    """Start ``request`` on ``slot`` (learner side: the worker gets ``wire()``)."""

    slot: int
    payload: tuple
    """(task, seed, reset options, env options): what the worker resets with (:func:`_reset_payload`)."""
    index: int
    """Position of the request in the rollout's request list."""
    request: EpisodeRequest

    def wire(self) -> tuple:
        return self.slot, "reset", self.payload


class Step(NamedTuple):
    """Step ``slot`` with ``action``; ``next``, when the episode ends with this step, resets the slot right
    after it in the same round trip."""

    slot: int
    action: np.ndarray
    next: Reset | None = None

    def wire(self) -> tuple:
        return (self.slot, "step", self.action) + (() if self.next is None else (self.next.payload,))


Operation = Union[Reset, Step]


def _reset_payload(request: EpisodeRequest) -> tuple:
    options = {"object_xy": request.object_xy} if request.object_xy is not None else {}
    options.update(request.reset_options or {})
    return request.task, request.seed, options, dict(request.env_options or {}) or None


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """One intra-op thread for the policy while rollouts run: the env workers hold the other cores."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EnvPool:
    """Env workers for all tasks of one backend; see the module docstring.

    ``engine="ray"`` runs one env per Ray actor instead (CPU-only simulators on a cluster) with the lockstep
    engine, one actor group per (task, env options), ``num_workers`` actors each.
    """

    def __init__(self, backend: str = "metaworld", env_options: dict[str, Any] | None = None, *,
                 num_workers: int | None = None, envs_per_worker: int = 8, engine: str = "subprocess",
                 ray_num_cpus: float = 1.0, env_factory: EnvFactory | None = None):
        if engine not in ENGINES:
            raise ValueError(f"rollout engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        num_workers = usable_cpus() if num_workers is None else num_workers
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        if isinstance(envs_per_worker, bool) or not isinstance(envs_per_worker, int) or envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be an int >= 1, got {envs_per_worker!r}")
        self.backend, self.env_options = backend, dict(env_options or {})
        self.num_workers, self.envs_per_worker = num_workers, envs_per_worker
        self.engine, self.ray_num_cpus = engine, ray_num_cpus
        self.factory = env_factory or functools.partial(make_task_env, backend=backend)
        self._workers: list[_Worker] = []
        self._vector_envs: dict[str, Any] = {}

    @property
    def num_slots(self) -> int:
        return self.num_workers * self.envs_per_worker

    @property
    def running(self) -> bool:
        """Whether worker processes (or Ray actors) are alive."""
        return bool(self._workers or self._vector_envs)

    def _factory(self) -> EnvFactory:
        return functools.partial(_with_options, self.factory, self.env_options)

    # ---- lifecycle ----
    def start(self) -> None:
        if self.engine == "subprocess" and not self._workers:
            factory = self._factory()
            self._workers = [_Worker(factory, i) for i in range(self.num_workers)]

    def release(self) -> None:
        """Stop the workers and free their memory; the next rollout starts them again."""
        for worker in self._workers:
            worker.close()
        self._workers = []
        for env in self._vector_envs.values():
            env.close()
        self._vector_envs.clear()

    close = release

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    # ---- rollouts ----
    def rollout(self, requests: Sequence[EpisodeRequest], policy: BatchPolicy, *, keep_images: bool = True,
                progress: bool | str = True) -> list[Trajectory]:
        """Run every request with ``policy``; returns one Trajectory per request, in request order."""
        requests = list(requests)
        if not requests:
            return []
        label = progress if isinstance(progress, str) else "rollout " + "/".join(sorted({r.task for r in requests}))
        bar = tqdm(total=len(requests), desc=label, disable=not progress, leave=False)
        start = time.perf_counter()
        try:
            with _single_torch_thread():
                if self.engine == "ray":
                    trajectories = self._ray_rollout(requests, policy, keep_images, bar)
                else:
                    self.start()
                    trajectories = self._overlapped_rollout(requests, policy, keep_images, bar)
        finally:
            bar.close()
        ROLLOUT_TOTALS.episodes += len(trajectories)
        ROLLOUT_TOTALS.env_steps += sum(t.length for t in trajectories)
        ROLLOUT_TOTALS.seconds += time.perf_counter() - start
        return trajectories

    def _ray_rollout(self, requests: list[EpisodeRequest], policy: BatchPolicy, keep_images: bool,
                     bar: tqdm) -> list[Trajectory]:
        from razor_robot.rollout.ray_envs import RayVectorEnv

        results: list[Trajectory | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.task, _options_key(r.env_options)), []).append(i)
        for (task, key), indices in groups.items():
            if (task, key) not in self._vector_envs:
                factory = functools.partial(self._factory(), task, **(requests[indices[0]].env_options or {}))
                self._vector_envs[(task, key)] = RayVectorEnv(factory, self.num_workers, num_cpus=self.ray_num_cpus)
            trajectories = lockstep_rollout(self._vector_envs[(task, key)], [requests[i] for i in indices],
                                            policy, keep_images=keep_images, on_batch=bar.update)
            for i, trajectory in zip(indices, trajectories):
                results[i] = trajectory
        return results  # type: ignore[return-value]

    def _overlapped_rollout(self, requests: list[EpisodeRequest], policy: BatchPolicy, keep_images: bool,
                            bar: tqdm) -> list[Trajectory]:
        n_workers = len(self._workers)
        n_slots = min(self.num_slots, len(requests))
        # Slot s lives on worker s % n_workers; the halves alternate along slots, so each spans all workers.
        halves = [[s for s in range(n_slots) if (s // n_workers) % 2 == h] for h in (0, 1)]
        queue = deque(enumerate(requests))
        episodes: dict[int, _Episode] = {}
        results: list[Trajectory | None] = [None] * len(requests)
        pending: list[dict[int, Operation]] = [{}, {}]  # per half: slot -> the operation in flight
        for h, half in enumerate(halves):
            first_ops: dict[int, Operation] = {}
            for slot in half:
                index, request = queue.popleft()
                first_ops[slot] = Reset(slot, _reset_payload(request), index, request)
            pending[h] = self._send(first_ops)
        # Halves are received in the order they were sent: each worker answers its messages in that order.
        in_flight = deque(h for h in (0, 1) if pending[h])
        while in_flight:
            h = in_flight.popleft()
            replies = self._receive(pending[h])
            ops: dict[int, Operation] = {}  # slot -> this half's next operation
            ready: list[int] = []
            for slot, (kind, result, next_reset) in replies.items():
                op = pending[h][slot]
                if isinstance(op, Reset):
                    episodes[slot] = self._begin(slot, op.index, op.request, result, policy)
                    ready.append(slot)
                    continue
                finished = self._record_step(episodes[slot], result)
                if finished:
                    episode = episodes.pop(slot)
                    results[episode.index] = episode.trajectory(keep_images)
                    bar.update(1)
                    if next_reset is not None:
                        episodes[slot] = self._begin(slot, op.next.index, op.next.request, next_reset, policy)
                if slot in episodes:
                    ready.append(slot)
                elif queue:  # ended early: the next request needs a plain reset
                    index, request = queue.popleft()
                    ops[slot] = Reset(slot, _reset_payload(request), index, request)
            if ready:
                self._act(ready, episodes, policy, queue, ops, keep_images)
            parts = {h: ops}
            if not pending[1 - h]:
                # The other half ran dry (the last wave): split this one so that policy and simulation still
                # overlap. Its first part is sent first, so the workers step the second while the policy acts.
                parts = dict(zip((h, 1 - h), _split_by_worker(ops, n_workers)))
            for part, part_ops in parts.items():
                pending[part] = self._send(part_ops)
                if pending[part]:
                    in_flight.append(part)
        return results  # type: ignore[return-value]

    # ---- helpers of the overlapped engine ----
    def _send(self, op_map: dict[int, Operation]) -> dict[int, Operation]:
        """Send each worker its slots' operations (wire form: without the learner-side bookkeeping)."""
        per_worker: dict[int, list[tuple]] = {}
        for slot, op in op_map.items():
            per_worker.setdefault(slot % len(self._workers), []).append(op.wire())
        for w, wire_ops in per_worker.items():
            self._workers[w].send(wire_ops)
        return dict(op_map)

    def _receive(self, sent: dict[int, Operation]) -> dict[int, tuple]:
        """Collect the replies of every worker that got operations of this half, as slot -> result."""
        slots_of: dict[int, list[int]] = {}
        for slot in sent:
            slots_of.setdefault(slot % len(self._workers), []).append(slot)
        replies: dict[int, tuple] = {}
        waiting = {self._workers[w].conn: w for w in slots_of}
        while waiting:
            for conn in wait(list(waiting)):
                w = waiting.pop(conn)
                for slot, reply in zip(slots_of[w], self._workers[w].receive()):
                    kind, result = reply[0], reply[1]
                    replies[slot] = (kind, result, reply[2] if kind == "step" else None)
        return dict(sorted(replies.items()))

    @staticmethod
    def _begin(slot: int, index: int, request: EpisodeRequest, reset_result: tuple,
               policy: BatchPolicy) -> _Episode:
        observation, info, horizon, success_mode = reset_result
        start = getattr(policy, "start_episode", None)
        if start is not None:
            start(slot, request)
        return _Episode(index, request, horizon, success_mode, str(info["instruction"]), observation)

    @staticmethod
    def _record_step(episode: _Episode, step: tuple) -> bool:
        """Append the step's outcome; True when the episode is over."""
        observation, terminated, truncated, info = step
        episode.step_success.append(bool(info["success"]))
        episode.observation = observation
        at_horizon = len(episode.actions) >= episode.horizon
        if "episode_success" in info:
            episode.final_success = bool(info["episode_success"])
        elif at_horizon:
            raise RuntimeError("env did not report 'episode_success' at its horizon; check its task_spec")
        return at_horizon or terminated or truncated or episode.terminate

    def _act(self, slots: list[int], episodes: dict[int, _Episode], policy: BatchPolicy,
             queue: deque, op_map: dict[int, Operation], keep_images: bool) -> None:
        """One batched policy call for the ready slots; queue their step operations."""
        batch = [episodes[s] for s in slots]
        images = np.stack([e.observation["image"] for e in batch])  # (N, H, W, 3)
        states = np.stack([e.observation["state"] for e in batch])  # (N, S)
        extra = {k: np.stack([e.observation[k] for e in batch]) for k in batch[0].observation
                 if k not in ("image", "state", VIEWER)}  # e.g. SimplerEnv's native frame for RT-1
        output = policy(images, states, [e.instruction for e in batch], slots, **extra)
        actions, extras = output if isinstance(output, tuple) else (output, {})
        actions = np.asarray(actions, dtype=np.float32)  # (N, A)
        terminate = np.asarray(extras.pop("terminate", np.zeros(len(slots), bool)), dtype=bool)  # (N,)
        for i, (slot, episode) in enumerate(zip(slots, batch)):
            if keep_images:
                episode.images.append(episode.observation["image"])
                if VIEWER in episode.observation:  # the video camera's frame: kept, never the policy's input
                    episode.extras.setdefault(VIEWER, []).append(episode.observation[VIEWER])
            episode.states.append(episode.observation["state"])
            episode.actions.append(actions[i])
            for key, value in extras.items():
                episode.extras.setdefault(key, []).append(np.asarray(value[i]))
            episode.terminate = bool(terminate[i])
            last = len(episode.actions) >= episode.horizon
            if last and queue:
                index, request = queue.popleft()
                op_map[slot] = Step(slot, actions[i], Reset(slot, _reset_payload(request), index, request))
            else:
                op_map[slot] = Step(slot, actions[i])


def _split_by_worker(op_map: dict[int, Operation],
                     n_workers: int) -> tuple[dict[int, Operation], dict[int, Operation]]:
    """Two parts of a half's operations, each worker's slots shared between them (its first half first)."""
    first: dict[int, Operation] = {}
    second: dict[int, Operation] = {}
    per_worker: dict[int, list[int]] = {}
    for slot in sorted(op_map):
        per_worker.setdefault(slot % n_workers, []).append(slot)
    for slots in per_worker.values():
        cut = -(-len(slots) // 2)
        first.update((slot, op_map[slot]) for slot in slots[:cut])
        second.update((slot, op_map[slot]) for slot in slots[cut:])
    return first, second


def _with_options(factory: EnvFactory, base_options: dict[str, Any], task: str, **overrides: Any) -> Any:
    """Build one env with the pool's options, overridden per request (picklable for spawned workers)."""
    return factory(task, **{**base_options, **overrides})


def rollout(
    requests: Sequence[EpisodeRequest],
    policy: BatchPolicy,
    *,
    pool: Any = None,
    env_factory: EnvFactory | None = None,
    backend: str = "metaworld",
    env_options: dict[str, Any] | None = None,
    num_workers: int | None = None,
    keep_images: bool = True,
    progress: bool | str = True,
) -> list[Trajectory]:
    """Run ``requests`` with ``policy``; one Trajectory per request, in request order.

    Pass an open :class:`razor_robot.rollout.pool.EnvPool` as ``pool`` to reuse its workers; otherwise a pool
    of ``num_workers`` workers (``env_factory(task, **env_options)`` or ``make_env(task, backend, ...)``) is
    made for this call and released after it.
    """
    if pool is not None:
        return pool.rollout(requests, policy, keep_images=keep_images, progress=progress)
    per_worker = max(1, -(-len(requests) // (num_workers or 1))) if num_workers else 8
    with EnvPool(backend, env_options, num_workers=num_workers, envs_per_worker=min(per_worker, 8),
                 env_factory=env_factory) as temporary:
        return temporary.rollout(requests, policy, keep_images=keep_images, progress=progress)
