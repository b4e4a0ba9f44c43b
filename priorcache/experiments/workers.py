"""Rollout workers on Ray sharing one prior cache (``priorcache run … --workers N``; docs/design.md §10).

**Design: one learner, N rollout actors, one shared cache.** The run's process is the learner: it
holds the one agent the run trains, evaluates and checkpoints (as in a one-process run). N rollout
workers (Ray actors) each hold their own environments, encoder and an *acting* copy of the agent;
a training round hands each worker one episode (episodes ``first … first + N - 1``, the same games and
reset seeds a one-process run plays), with the learner's current weights and F2 temperature. A worker
plays its episode, asking the shared prior cache, and sends back the episode's metrics line and its
transitions; the learner adds them to its replay buffer in episode order, taking one gradient step
per transition as a one-process run does per environment step, and the next round starts from the
new weights. So the same total environment steps train one agent whatever N is; what N changes is
that an episode acts on weights up to one round old (as in Ape-X-style actor/learner splits), and
every worker's miss is every other worker's hit. N independent learners would each learn from 1/N of
the experience and leave N agents and no one policy to evaluate.

A worker's draws depend on (seed, episode) only (its RNG is reseeded per episode), so an episode
played again by another worker (below) is the same draw stream. The shared cache is held by
``cache_shards`` Ray actors (:mod:`priorcache.cache.shared_cache`), each with its own LLM backend,
partitioned by prompt prefix; workers send every lookup of a step in one call per shard, with the
state's embedding, and outcome feedback without waiting.

**A worker that dies** (killed, out of memory) ends its episode unfinished: the learner notes it,
plays that episode again on another worker, and goes on with the others; only when none is left does
the run end, with a clear error and its files and checkpoint as after a kill (``--resume``). The
shared cache keeps everything the dead worker's finished lookups inserted: it loses at most the
lookups in flight, whose answers had nowhere to go.

``ray.init`` is local (small, no dashboard, worker logs not forwarded) unless ``--ray-address`` names
a cluster, which must answer within ``CONNECT_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.agents.base import EPISODES_PER_SEED, Agent, episode_seed
from priorcache.agents.buffers import FIELDS, Transition
from priorcache.agents.registry import agent_spec, make_agent
from priorcache.cache.shared_cache import CacheShard, CacheSpec, SharedCacheClient
from priorcache.errors import ConfigError
from priorcache.experiments.metrics import EpisodeRecord
from priorcache.prior.prompts import prompt_builder
from priorcache.validation import is_int

if TYPE_CHECKING:
    from priorcache.experiments.runner import RunConfig

#: Seconds a ``--ray-address`` has to answer (TCP, then Ray's own handshake).
CONNECT_TIMEOUT_S = 15.0
#: Seconds the cache shards and workers have to start (model loads included).
STARTUP_TIMEOUT_S = 600.0
MAX_WORKERS = 256
MAX_SHARDS = 64
#: "shared": one cache for all workers; "isolated": one per worker (the measurement's baseline).
SHARING = ("shared", "isolated")
#: Lookups one shard serves at once (threads of its actor): hits need not wait behind a miss.
SHARD_CONCURRENCY = 16


class WorkersLost(ConfigError):
    """Every rollout worker died: the run cannot go on (its files and checkpoint stay, for ``--resume``)."""


def check_scale_out(config: RunConfig) -> None:
    """ConfigError for ``workers`` / ``cache_shards`` settings the Ray path cannot run."""
    workers, shards = config.workers, config.cache_shards
    if config.cache_sharing not in SHARING:
        raise ConfigError(f"--cache-sharing must be one of {', '.join(SHARING)}, got {config.cache_sharing!r}")
    if not is_int(shards) or not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"--cache-shards must be an integer in [1, {MAX_SHARDS}], got {shards!r}")
    if workers is None:
        if shards != 1 or config.cache_sharing != "shared":
            raise ConfigError("--cache-shards and --cache-sharing are about the cache of --workers: give --workers too")
        return
    if not is_int(workers) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be an integer in [1, {MAX_WORKERS}] (rollout workers), got {workers!r}")
    spec = agent_spec(config.agent)
    if "backend" in spec.cls.components:
        raise ConfigError(
            f"--workers runs agents that ask the LLM through the prior cache or not at all; {config.agent} "
            "calls the backend itself"
        )
    if config.num_envs != 1:
        raise ConfigError("--workers plays one episode per worker at a time: leave --num-envs at 1")
    if shards > 1 and config.cache.mode not in ("static", "none"):
        raise ConfigError(
            f"--cache-shards > 1 needs --cache static or none: the {config.cache.mode} mode learns one set "
            "of parameters from the whole lookup stream, which shards would split"
        )
    if shards > 1 and config.cache_sharing == "isolated":
        raise ConfigError("--cache-sharing isolated gives each worker a cache of its own: leave --cache-shards at 1")
    if shards > 1 and not spec.uses_cache:
        raise ConfigError(f"--cache-shards splits the prior cache, which the {config.agent} agent does not use")


# --- connecting ---------------------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless something accepts a TCP connection at ``address`` within ``timeout_s``
    (Ray itself would retry an unreachable address for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(
            f"--ray-address {address} does not answer ({e.strerror or type(e).__name__}); "
            "start the cluster (`ray start --head`) or leave --ray-address out for a local one"
        ) from None


def connect_ray(address: str | None, num_cpus: int, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Connect to the cluster at ``address`` or start a local one; True when this call started it
    (and so should shut it down). An already initialised Ray (a test's, a notebook's) is used as it is."""
    import ray

    if address is not None:
        check_reachable(address, timeout_s)  # also when Ray is up: the user named this cluster
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
    if address is None:
        # A small object store: lookups, weights and transitions are small; Ray's default takes 30 % of RAM.
        ray.init(num_cpus=num_cpus, object_store_memory=256 * 1024**2, **options)
        return True
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as e:  # handed to the caller below
            failure.append(e)

    # Something that accepts TCP but is no Ray head can keep ray.init waiting: bound it.
    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ConfigError(
            f"--ray-address {address} accepts connections but is no Ray cluster answering in {timeout_s:.0f} s"
        )
    if failure:
        raise ConfigError(f"--ray-address {address}: Ray could not connect ({failure[0]})") from None
    return False


# --- the learner's side of a worker's episode ------------------------------------------------------------
def learner_state(agent: Agent) -> dict[str, Any]:
    """What a worker acts with: the Q-network's weights (DQN agents) and F2's hit rate."""
    state: dict[str, Any] = {}
    q = getattr(agent, "q", None)
    if q is not None:
        state["q"] = {k: v.detach().cpu().numpy().copy() for k, v in q.state_dict().items()}
    schedule = _schedule(agent)
    if schedule is not None:
        state["hit_rate"] = float(schedule.hit_rate)
    return state


def _schedule(agent: Agent) -> Any:
    sampler = getattr(agent, "sampler", None)
    return sampler.schedule if sampler is not None else getattr(agent, "schedule", None)


def acting_config(agent_config: Any) -> Any:
    """A worker's copy of the agent config: it acts and records transitions but never trains (the
    learner does), so learning never starts in its buffer."""
    if hasattr(agent_config, "learning_starts") and hasattr(agent_config, "buffer_size"):
        return replace(agent_config, learning_starts=agent_config.buffer_size + 1)
    return agent_config


def take_transitions(agent: Agent) -> dict[str, np.ndarray] | None:
    """The transitions an acting agent recorded since the last take (then its buffer is emptied)."""
    buffer = getattr(agent, "buffer", None)
    if buffer is None:
        return None
    if buffer.full:
        raise ConfigError(f"an episode outgrew the worker's replay buffer ({buffer.size} transitions)")
    arrays = {k: getattr(buffer, k)[: buffer.pos].copy() for k in FIELDS}
    buffer.pos = 0
    return arrays


def ingest(agent: Agent, arrays: dict[str, np.ndarray] | None) -> int:
    """Add a worker's transitions to the learner's replay buffer, one gradient step after each (as a
    one-process run takes one per environment step); returns how many."""
    if arrays is None or not hasattr(agent, "buffer"):
        return 0
    n = len(arrays["rewards"])
    for i in range(n):
        t = Transition(arrays["states"][i], arrays["actions"][i], float(arrays["rewards"][i]), bool(arrays["dones"][i]))
        t.hit = bool(arrays["hits"][i])
        agent.buffer.add(t, arrays["next_states"][i], arrays["next_support"][i][arrays["next_mask"][i]])
        agent._train_step()  # the DQN update, exactly as after an environment step of its own
    agent.step_count += n
    return n


class RolloutWorker:
    """One rollout worker (a Ray actor): its environments, encoder and acting agent copy; the shared
    cache through a :class:`SharedCacheClient`."""

    def __init__(
        self, config: RunConfig, worker: int, shards: list[Any], examples: list[tuple[str, str]], threads: int = 1
    ) -> None:
        import torch

        from priorcache.cache.encoder import MiniLMEncoder
        from priorcache.experiments.runner import _Games

        torch.set_num_threads(threads)
        self.config, self.worker = config, worker
        self.encoder = MiniLMEncoder()
        self.games = _Games(config)
        spec = agent_spec(config.agent)
        self.cache = (
            SharedCacheClient(shards, self.encoder, config.cache, get=shard_get) if spec.uses_cache and shards else None
        )
        components = {
            "encoder": self.encoder,
            "prior_cache": self.cache,
            "backend": None,
            "prompt_builder": prompt_builder(config.env, examples),
        }
        self.agent = make_agent(config.agent, acting_config(config.agent_config()), seed=0, **components)

    def ready(self) -> int:
        return os.getpid()

    def play(self, seed: int, episode: int, state: dict[str, Any]) -> dict[str, Any]:
        """Training episode ``episode`` of run seed ``seed`` with the learner's ``state``: its metrics
        line (an ``EpisodeRecord``), transitions and F2 hit rate at the end."""
        agent = self.agent
        if "q" in state:
            import torch

            agent.q.load_state_dict({k: torch.as_tensor(v) for k, v in state["q"].items()})
        schedule = _schedule(agent)
        if schedule is not None and "hit_rate" in state:
            schedule.hit_rate = state["hit_rate"]
        rng = getattr(agent, "rng", None)
        if rng is not None:  # in place: the posterior sampler shares this generator
            rng.bit_generator.state = np.random.default_rng([seed, episode, EPISODES_PER_SEED]).bit_generator.state
        game, env = self.games.train_games(episode, 1)[0]
        record = EpisodeRecord(seed=seed, episode=episode, game_seed=game)
        sent = self.cache.sent_lookups if self.cache is not None else 0
        outcome = agent.run_episode(env, episode_seed(seed, episode), on_step=record.add)
        record.success = outcome.success
        record.wall_time_s = outcome.wall_time_s
        return {
            "record": record,
            "transitions": take_transitions(agent),
            "hit_rate": float(schedule.hit_rate) if schedule is not None else None,
            "wall_time_s": outcome.wall_time_s,
            "sent_lookups": (self.cache.sent_lookups - sent) if self.cache is not None else 0,
        }


@dataclass
class WorkerFigures:
    """One worker's share of the run (summary.json ``workers.per_worker``)."""

    worker: int
    pid: int
    episodes: int = 0
    steps: int = 0
    lookups: int = 0
    llm_queries: int = 0  # LLM queries its lookups caused (full and partial)
    wall_time_s: float = 0.0  # time in its episodes
    alive: bool = True
    replayed: list[int] = field(default_factory=list)  # episodes it died in (played again by another)


class WorkerPool:
    """The cache shards and rollout workers of a run, and the training rounds (module docstring)."""

    def __init__(
        self, config: RunConfig, encoder: Any | None = None, ray_address: str | None = None, progress: bool = True
    ) -> None:
        """``encoder``: the learner's (loaded after connecting, when None: a bad address fails fast)."""
        import ray

        from priorcache.cache.encoder import MiniLMEncoder

        self.config, self.progress = config, progress
        workers, shards = int(config.workers or 1), int(config.cache_shards)
        spec = agent_spec(config.agent)
        isolated = config.cache_sharing == "isolated"
        n_shards = (workers if isolated else shards) if spec.uses_cache else 0
        self._started_ray = connect_ray(ray_address, num_cpus=workers + n_shards)
        self._actors: list[Any] = []
        try:
            self.encoder = encoder = encoder if encoder is not None else MiniLMEncoder()
            # Each actor asks for one CPU, or its share of a smaller cluster, so that all of them fit.
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
            per_actor = min(1.0, cpus / (workers + n_shards)) if cpus else 0.0
            tag = uuid.uuid4().hex[:8]
            shard_cls = ray.remote(CacheShard)
            cache_spec = CacheSpec(
                config.cache, str(encoder.name), int(encoder.dim), _BackendFactory(config), prior=config.prior
            )
            self.shards = [
                shard_cls.options(
                    num_cpus=per_actor, max_concurrency=SHARD_CONCURRENCY, name=f"priorcache-cache-{tag}-{i}"
                ).remote(cache_spec)
                for i in range(n_shards)
            ]
            self._actors += self.shards
            shard_info = self._wait([s.ready.remote() for s in self.shards], "prior cache shards")
            info = shard_info[0] if shard_info else {}
            self.examples: list[tuple[str, str]] = [tuple(e) for e in info.get("examples", [])]
            self.adaptation_info: dict[str, Any] | None = info.get("adaptation")
            self.shard_pids = [i["pid"] for i in shard_info]
            # Isolated caches: the learner evaluates, checkpoints and saves worker 0's (an ablation).
            mine = self.shards[:1] if isolated else self.shards
            self.cache = SharedCacheClient(mine, encoder, config.cache, get=shard_get) if self.shards else None
            self._all = SharedCacheClient(self.shards, encoder, config.cache, get=shard_get) if self.shards else None
            worker_cls = ray.remote(RolloutWorker)
            self.workers = [
                worker_cls.options(num_cpus=per_actor, name=f"priorcache-rollout-{tag}-{i}").remote(
                    config, i, self.shards[i : i + 1] if isolated else self.shards, self.examples
                )
                for i in range(workers)
            ]
            self._actors += self.workers
            pids = self._wait([w.ready.remote() for w in self.workers], "rollout workers")
            self.figures = [WorkerFigures(worker=i, pid=pid) for i, pid in enumerate(pids)]
        except BaseException:
            self.close()
            raise

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        import ray

        try:
            return ray.get(refs, timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"{len(refs)} {what} did not start within {STARTUP_TIMEOUT_S:.0f} s "
                f"(cluster resources: {ray.cluster_resources()})"
            ) from None
        except ray.exceptions.RayError as e:
            raise ConfigError(f"the {what} failed to start: {_cause(e)}") from None

    def run_episodes(self, agent: Agent, seed: int, first: int, n: int) -> list[EpisodeRecord]:
        """Training episodes ``first … first + n - 1`` of seed ``seed``, one per live worker at a time,
        each with the learner's weights as they are now; then the learner learns from them in order."""
        import ray

        start = time.perf_counter()
        state = ray.put(learner_state(agent))
        queue = list(range(first, first + n))
        idle = [f.worker for f in self.figures if f.alive]
        pending: dict[Any, tuple[int, int]] = {}
        results: dict[int, dict[str, Any]] = {}
        while queue or pending:
            while queue and idle:
                worker, episode = idle.pop(0), queue.pop(0)
                pending[self.workers[worker].play.remote(seed, episode, state)] = (worker, episode)
            ready, _ = ray.wait(list(pending), num_returns=1)
            worker, episode = pending.pop(ready[0])
            try:
                results[episode] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                # The episode raised (a shard that died included: Ray raises it as a task error that is
                # also an actor error, so this comes first): the run cannot go on as configured.
                raise ConfigError(f"rollout worker {worker} failed in episode {episode}: {_cause(e)}") from None
            except ray.exceptions.RayActorError as e:  # the worker's process itself is gone
                self._lost(worker, episode, e)
                queue.insert(0, episode)
                continue
            self._count(worker, results[episode])
            idle.append(worker)
        records = []
        hit_rates = []
        for episode in sorted(results):
            result, trained = results[episode], agent.train_time_s
            ingest(agent, result["transitions"])
            result["record"].train_time_s = agent.train_time_s - trained  # the learner's steps on it
            records.append(result["record"])
            if result["hit_rate"] is not None:
                hit_rates.append(result["hit_rate"])
        schedule = _schedule(agent)
        if schedule is not None and hit_rates:
            schedule.hit_rate = float(np.mean(hit_rates))  # what the learner's predict (evaluation) acts with
        # Episodes of a round overlap in time: each gets an even share of the round's wall time (as
        # lockstep episodes do), so the run's wall time is their sum; the worker's own is in its figures.
        wall = time.perf_counter() - start
        for record in records:
            record.wall_time_s = wall / len(records)
        return records

    def _count(self, worker: int, result: dict[str, Any]) -> None:
        f, record = self.figures[worker], result["record"]
        f.episodes += 1
        f.steps += record.steps
        f.lookups += record.lookups
        f.llm_queries += record.llm_calls + record.partial_calls
        f.wall_time_s += result["wall_time_s"]

    def _lost(self, worker: int, episode: int, error: BaseException) -> None:
        f = self.figures[worker]
        f.alive = False
        f.replayed.append(episode)
        alive = sum(g.alive for g in self.figures)
        message = (
            f"rollout worker {worker} (pid {f.pid}) died in episode {episode} ({type(error).__name__}); "
            f"the episode is played again by another worker, {alive} left"
        )
        print(message, file=sys.stderr, flush=True)
        if alive == 0:
            raise WorkersLost(
                f"every rollout worker died (the last, {worker}, in episode {episode}); the run's files and "
                "checkpoint are kept: continue it with --resume"
            )

    def seed_caches(self) -> list[Any]:
        """The caches a new seed starts afresh: the shared one, or every worker's own (isolated)."""
        if not self.shards:
            return []
        if self.config.cache_sharing != "isolated":
            return [self.cache]
        others = [SharedCacheClient([s], self.encoder, self.config.cache, get=shard_get) for s in self.shards[1:]]
        return [self.cache, *others]

    def summary(self) -> dict[str, Any]:
        """summary.json's ``workers``: per-worker figures and, with a cache, each shard's load."""
        out: dict[str, Any] = {
            "count": len(self.figures),
            "alive": sum(f.alive for f in self.figures),
            "per_worker": [vars(f) | {"replayed": list(f.replayed)} for f in self.figures],
            "cache_shards": len(self.shards),
            "cache_sharing": self.config.cache_sharing,
        }
        if self._all is not None:
            out["per_shard"] = self._all.shard_stats()
        return out

    def close(self) -> None:
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead: nothing to end
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False


class _BackendFactory:
    """Builds the run's LLM backend (with its F8 adaptation) inside a cache shard's process."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self) -> tuple[Any, dict[str, Any]]:
        from priorcache.experiments.runner import adapt_for

        adaptation = adapt_for(self.config, None, False)
        return adaptation.backend, {"examples": list(adaptation.examples), "adaptation": adaptation.info}


def shard_get(refs: Any) -> Any:
    """``ray.get`` for calls to the cache shards: a shard whose process died is named as such (the
    run cannot go on without its entries) rather than as Ray's generic actor error."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayActorError as e:
        raise ConfigError(f"a shared prior cache actor died ({type(e).__name__}); its entries are lost") from None


def _cause(error: BaseException) -> str:
    """The message of what went wrong inside a Ray task, without Ray's traceback wrapper."""
    cause = getattr(error, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(error).splitlines()[0]


@contextmanager
def start_pool(
    config: RunConfig, encoder: Any | None, ray_address: str | None = None, progress: bool = True
) -> Iterator[WorkerPool]:
    """The run's worker pool, its actors ended (and a Ray started here shut down) on leaving."""
    pool = WorkerPool(config, encoder, ray_address, progress)
    try:
        yield pool
    finally:
        pool.close()
