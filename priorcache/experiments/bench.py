"""``priorcache bench text``: every method on every text environment, on the same seeds (docs/design.md §1).

Methods: direct LLM, ReAct, plain DQN, uncached DQN-Prior (the 100 % reference), the same with the
unadapted 0-shot prior (``dqn-prior-uncached-0shot``), and DQN-Prior with every cache mode the code
implements: ``static``, ``adaptive``, and ``kl-budget`` at the targets of ``KL_TARGETS`` (one
method each). Every LLM method but the 0-shot one uses the prior adapted by ``shots``/``adapt``
(F8), built once per environment and shared by its runs. Each (environment, method, seed) is one run
in ``OUT/runs/<env>/<method>/seed<N>/``, so the benchmark is resumable: a finished run (its
``summary.json`` not marked partial) is kept and skipped, and a crash or Ctrl-C loses at most the run
in progress. A finished run made with different settings is refused, not overwritten. After every
run the report (``results.md``, ``results.csv``, PNG plots) is re-rendered from what is on disk.

Several bench processes may share one ``--out`` (e.g. one per GPU): each run holds its folder's lock
(``OUT/runs/<env>/<method>/.seed<N>.lock``, :func:`priorcache.io.folder_lock`) while it runs. A
process that finds a run locked skips it and comes back to it after the others, waiting for the lock
then; a run the other process finished is not run again, and one it left unfinished (killed: the
kernel releases its lock) is run from the start.

Every run trains on the same training games and is evaluated on the same held-out games (the
runner's protocol); deterministic baselines (direct LLM and ReAct: greedy, no learning) run one
training episode per seed, since their held-out evaluation is all that matters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from priorcache.agents.registry import agent_spec
from priorcache.cache.config import MODES, CacheConfig
from priorcache.envs.registry import ENVIRONMENTS, default_episodes, require_text_env
from priorcache.errors import ConfigError
from priorcache.experiments.adapt import Adaptation
from priorcache.experiments.report import method_label, write_report
from priorcache.experiments.run_folder import is_finished, plan_run_folder
from priorcache.experiments.runner import DETERMINISTIC_AGENTS, RunConfig, adapt_for, run_experiment
from priorcache.io import folder_lock
from priorcache.prior.adaptation import DEFAULT_EPOCHS
from priorcache.prior.registry import check_backend_options
from priorcache.validation import check_seeds

TEXT_ENVS = ("textworld", "alfworld", "babyai", "webshop")

#: Target expected KL (nats) of the kl-budget methods: tight, default and loose.
KL_TARGETS = (0.01, 0.05, 0.2)


class Method(NamedTuple):
    agent: str
    cache_mode: str
    cache_settings: dict[str, Any]  # beyond the mode
    zero_shot: bool = False  # the unadapted prior, whatever the bench's shots/adapt


def _prior_methods() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for mode in MODES:  # the cache modes come from the cache itself, so new ones join here
        if mode == "kl-budget":
            for target in KL_TARGETS:
                methods[method_label("dqn-prior", mode, target)] = Method(
                    "dqn-prior", mode, {"kl_budget": {"target_kl": target}}
                )
        else:
            methods[method_label("dqn-prior", mode)] = Method("dqn-prior", mode, {})
            if mode == "none":
                methods[ZERO_SHOT_REFERENCE] = Method("dqn-prior", mode, {}, zero_shot=True)
    return methods


ZERO_SHOT_REFERENCE = "dqn-prior-uncached-0shot"

#: method name -> how it runs.
METHODS: dict[str, Method] = {
    "direct-llm": Method("direct-llm", "none", {}),
    "react": Method("react", "none", {}),
    "dqn": Method("dqn", "none", {}),
    **_prior_methods(),
}

#: --quick: a smoke run of every cell, minutes not hours.
QUICK = {"seeds": [0], "episodes": 2, "max_episode_steps": 8, "train_games": 2, "eval_games": 2}


@dataclass
class BenchConfig:
    out: Path = Path("runs/bench-text")
    envs: list[str] = field(default_factory=lambda: list(TEXT_ENVS))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    episodes: int | None = None  # None: each environment's budget (EnvironmentInfo.default_episodes)
    max_episode_steps: int | None = None  # None: each environment's default
    train_games: int = 10
    eval_games: int = 10
    eval_every: int = 0
    eval_policy: str = "greedy"
    shots: int = 0
    adapt: str = "none"
    num_envs: int = 1
    demo_episodes: int = 0  # for the learning methods (plain DQN and DQN-Prior alike)
    lora_epochs: int = DEFAULT_EPOCHS
    backend: str = "embedded"
    model_path: str | None = None
    base_url: str | None = None  # --backend openai
    model: str | None = None  # --backend openai
    device: str = "cpu"

    def __post_init__(self) -> None:
        for env in self.envs:
            if env.partition(":")[0] not in ENVIRONMENTS:
                raise ConfigError(f"unknown environment {env!r}; choose from {sorted(ENVIRONMENTS)}")
            require_text_env(env, "bench text")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if not self.envs or not self.methods:
            raise ConfigError("bench needs at least one environment and method")
        check_backend_options(self.backend, self.model_path, self.base_url, self.model)  # before any run starts
        self.seeds = check_seeds(self.seeds)
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"episodes must be ≥ 1, got {self.episodes}")

    def run_config(self, env: str, method: str, seed: int) -> RunConfig:
        m = METHODS[method]
        adapted = agent_spec(m.agent).needs_llm and not m.zero_shot
        return RunConfig(
            env=env,
            agent=m.agent,
            cache=CacheConfig.from_dict({"mode": m.cache_mode, **m.cache_settings}),
            backend=self.backend,
            model_path=self.model_path,
            base_url=self.base_url,
            model=self.model,
            device=self.device,
            episodes=1 if m.agent in DETERMINISTIC_AGENTS else self.episodes or default_episodes(env),
            seeds=[seed],
            max_episode_steps=self.max_episode_steps,
            out=self.run_dir(env, method, seed),
            train_games=self.train_games,
            eval_games=self.eval_games,
            eval_every=self.eval_every,
            eval_policy=self.eval_policy,
            shots=self.shots if adapted else 0,
            adapt=self.adapt if adapted else "none",
            lora_epochs=self.lora_epochs,
            num_envs=self.num_envs,
            demo_episodes=self.demo_episodes if agent_spec(m.agent).cls.learns else 0,
            label=method,
        )

    def run_dir(self, env: str, method: str, seed: int) -> Path:
        return cell_dir(self.out, env, method, seed)


def cell_dir(out: Path, env: str, method: str, seed: int) -> Path:
    """A benchmark cell's run folder: ``OUT/runs/<env>/<method>/seed<N>`` (``:`` in the env name as ``-``)."""
    return Path(out) / "runs" / env.replace(":", "-") / method / f"seed{seed}"


def run_status(config: Any) -> str:
    """'finished', 'todo' (absent or interrupted), or raises when a finished run used other settings."""
    out = Path(config.out)
    if not is_finished(out):
        return "todo"
    try:
        saved = json.loads((out / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "todo"
    wanted = json.loads(json.dumps(config.to_json()))  # as it reads back from disk
    differing = sorted(k for k in wanted if k != "out" and k in saved and not _same_settings(saved[k], wanted[k]))
    if differing:
        raise ConfigError(
            f"{out} holds a finished run with other settings ({', '.join(differing)}); "
            "give another --out, or remove that folder to run it again"
        )
    return "finished"


def _same_settings(saved: Any, wanted: Any) -> bool:
    """Equal, except that settings the saved run does not record at all are taken as matching: they
    were added to the code after the run was made (e.g. the adaptive modes' settings in a static run's
    cache config), and a finished run is not redone for a setting it never used."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return all(_same_settings(saved[k], v) for k, v in wanted.items() if k in saved)
    return saved == wanted


def run_bench(
    config: BenchConfig,
    backend: Any = None,
    encoder: Any = None,
    progress: bool = True,
    on_run: Callable[[RunConfig, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every missing (environment, method, seed) cell, then write the report; returns the report."""
    cells = [
        config.run_config(env, method, seed)
        for env in config.envs
        for method in config.methods
        for seed in config.seeds
    ]
    adaptations: dict[tuple[str, int, str], Adaptation] = {}
    models = SharedModels(config, backend, encoder)

    def run_cell(cell: RunConfig) -> None:
        adaptation = None
        if agent_spec(cell.agent).needs_llm:
            key = (cell.env, cell.shots, cell.adapt, cell.lora_epochs)
            if key not in adaptations:  # once per environment and adaptation, shared by its runs
                base = None if cell.adapt in ("lora", "both") else models.backend()
                adaptations[key] = adapt_for(cell, base)
            adaptation = adaptations[key]
        # A killed run of these settings continues from its checkpoint; one of other settings (an
        # older release's) is replaced. Foreign files in the folder are refused either way.
        resume = can_resume(cell)
        summary = run_experiment(
            cell, encoder=models.encoder(), progress=False, adaptation=adaptation, resume=resume, overwrite=not resume
        )
        if on_run is not None:
            on_run(cell, summary)
        write_report(Path(config.out))

    run_cells(cells, run_cell, "bench text", progress)
    return write_report(Path(config.out))


class SharedModels:
    """The LLM backend and the sentence encoder that a benchmark's runs share, each loaded on first use
    (from ``config``'s backend, model_path, device, base_url and model) unless given."""

    def __init__(self, config: Any, backend: Any = None, encoder: Any = None) -> None:
        self.config, self._backend, self._encoder = config, backend, encoder

    def encoder(self) -> Any:
        if self._encoder is None:
            from priorcache.cache.encoder import MiniLMEncoder

            self._encoder = MiniLMEncoder()
        return self._encoder

    def backend(self) -> Any:
        if self._backend is None:
            from priorcache.prior.registry import make_backend

            c = self.config
            self._backend = make_backend(
                c.backend, model_path=c.model_path, device=c.device, base_url=c.base_url, model=c.model
            )
        return self._backend


def can_resume(cell: Any) -> bool:
    """Whether ``cell``'s folder holds nothing or a run of these very settings (else it is replaced)."""
    try:
        plan_run_folder(Path(cell.out), cell.to_json(), getattr(cell, "cache_path", None), resume=True, overwrite=False)
    except ConfigError:
        return False
    return True


def run_cells(cells: list[Any], run_cell: Callable[[Any], None], desc: str, progress: bool = True) -> None:
    """Run every cell (a run config with ``out``, ``env``, ``label``, ``seeds``) not yet finished.

    Each cell runs under its run folder's lock (``folder_lock``), so that several bench processes
    on one ``--out`` share the work: a cell another process is running is skipped and returned to
    after the others (then waiting for its lock), and a cell found finished once its lock is held
    is not run again."""
    todo = [cell for cell in cells if run_status(cell) == "todo"]  # also refuses mismatched finished runs
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=desc, unit="run", disable=not progress)

    def run_locked(cell: Any) -> None:
        if run_status(cell) != "finished":  # another process may have finished it meanwhile
            bar.set_postfix_str(f"{cell.env} {cell.label} seed {cell.seeds[0]}")
            run_cell(cell)
        bar.update(1)

    try:
        busy: list[Any] = []
        for cell in todo:
            with folder_lock(cell.out, blocking=False) as held:
                if not held:  # another bench process is running it: do the others first
                    busy.append(cell)
                    continue
                run_locked(cell)
        for cell in busy:
            with folder_lock(cell.out):  # waits for that process; it holds no other lock meanwhile
                run_locked(cell)
    finally:
        bar.close()
