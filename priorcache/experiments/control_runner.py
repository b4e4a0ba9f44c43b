"""Continuous-control runs (issue 12): Stable-Baselines3 SAC or SAC-Prior on a MuJoCo or MetaWorld
task, over seeds, under the train / evaluate protocol (docs/design.md §1), from ``priorcache run``.

Per seed, the method learns on the first ``train_games`` training instances of the task, in turn
(:class:`~priorcache.experiments.control_episodes.TrainingInstances`), for ``steps`` environment
steps, in chunks of ``eval_every`` steps; at step 0 (when ``eval_every`` > 0) and after every chunk
it plays one deterministic episode on each of ``eval_episodes`` held-out instances (the registry's
``eval`` split) with no learning (:func:`~priorcache.experiments.control_learners.evaluate_control`).
The final held-out return (and MetaWorld success), mean and 95 % CI over seeds, is the run's headline.

SAC-Prior's skill prior (:mod:`priorcache.prior.skill_prior`): p_LLM(z|s) over the task's skill names
from the LLM backend (the embedded one by default, built as the text runner builds it) through a
:class:`~priorcache.cache.prior_cache.PriorCache` of the skill kind keyed by the MiniLM embedding of
φ(s) (``cache.mode`` ``none`` is the uncached reference), times per-skill Gaussians fitted on
``shots`` demonstrations of training instances (``record_control_demos``, seed 0 for every run
seed: MetaWorld's scripted experts, MuJoCo's saved SAC demonstrator; ``shots`` 0: the flat prior).
Every seed starts with a fresh cache and agent. Both methods share the settings listed in
:mod:`priorcache.experiments.control_learners`.

A run writes into ``out`` as the text runner does (:mod:`priorcache.experiments.run_folder`: a new or
empty folder, or a run of this very configuration; another configuration only with ``overwrite``),
each file atomically after every chunk: ``config.json``; ``metrics.jsonl`` (one line per training
episode, :class:`~priorcache.experiments.control_episodes.ControlEpisode`); ``evals.jsonl`` (one line
per held-out episode); ``summary.json`` (``"partial": true`` until the run ends); ``cache/seedN/``
(each seed's cache at its end, cached modes). **Resume** (``resume=True``): a finished run is
returned as it is; otherwise the run goes on from its checkpoint (``checkpoint/``: ``progress.json``
counts the finished seeds, the steps of the seed in training and the lines all that accounts for;
lines beyond are cut). SAC-Prior is checkpointed after every chunk (``learner/``: the agent in
safetensors + JSON, its replay buffer, the cache and its run-time state, the training episode in
progress; ``seed_clock.json``), so a killed seed goes on from its last evaluation; an SB3 SAC seed
that was running starts again from scratch: SB3 saves pickles, which this project never loads.
Both methods run their episode in progress on across chunks (only the seed's budget cuts one);
SAC-Prior's checkpoint holds it (its actions, skill, steps left, return and record so far) and a
resumed seed replays its actions on the training instance (a MuJoCo state cannot be saved simply,
but it replays exactly), so a resumed seed plays the episodes an uninterrupted one plays.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priorcache.cache.prior_cache import CacheConfig
from priorcache.cache.store import swap_into_place
from priorcache.envs.registry import ENVIRONMENTS, environment_info, game_seeds, make_split_env
from priorcache.errors import ConfigError
from priorcache.experiments.control_episodes import TrainingInstances, summarise_control, summarise_control_held_out
from priorcache.experiments.control_learners import SB3SAC, SACPriorLearner, SkillPriorParts, evaluate_control
from priorcache.experiments.run_folder import (
    CHECKPOINT,
    Progress,
    plan_run_folder,
    read_lines,
    read_progress,
    remove_checkpoint,
    write_checkpoint,
)
from priorcache.experiments.summaries import load_summary, read_json_object
from priorcache.experiments.tensorboard_log import ScalarLog, purge_from
from priorcache.io import atomic_write_json, atomic_write_text, folder_lock, make_temp_dir
from priorcache.validation import check_seeds, is_int, is_number

METHODS = ("sac", "sac-prior")
#: In a checkpoint folder: the SAC-Prior learner mid-seed, and that seed's clocks.
_LEARNER = "learner"
_CLOCK = "seed_clock.json"
#: Defaults of a run (``priorcache run`` uses them when the options are not given).
DEFAULT_STEPS = 5_000
DEFAULT_EVAL_EVERY = 1_000
DEFAULT_SHOTS = 5
DEFAULT_SKILL_HOLD = 10
#: δ_KL per action dimension of the prior-led settings (``--prior-led``, the prior-led bench methods): the
#: actor kept near a sharp prior (the default, 1 + log 2, is SAC's target entropy under the flat prior and
#: let RL undo the prior on push-v3).
PRIOR_LED_TARGET_KL = 0.25
#: … and their skill choice's temperature, fixed (F2 off). Q on the prior's scale has unit spread, so Q adds at
#: most about 1/16 nat per unit of spread to a skill and the fine-tuned prior picks the skills while the critic
#: is young. On push-v3 the prior's mode beats its runner-up by only 0.15–0.32 nats at some decisive states,
#: where a young critic's Q/α_z gaps reached 1.4 at α_z = 4 (docs/design.md §4, "Skill temperature").
PRIOR_LED_SKILL_ALPHA = 16.0
#: … and the gradient steps over which Q's say in that choice grows to full (``skill_q_warmup``): at 16 a young
#: critic still re-picked near-tied skills on one push-v3 seed of three; with 20,000 none did (a quarter of
#: Q's say at 5,000 steps).
PRIOR_LED_SKILL_Q_WARMUP = 20_000
#: F8 for the skill prior: the base LLM, or a LoRA fine-tune on the demonstrations' (φ(s), skill) pairs.
CONTROL_ADAPT = ("none", "lora")


def control_envs() -> list[str]:
    """Every control task name, ``family:variant``."""
    return [
        f"{name}:{v}" for name, info in sorted(ENVIRONMENTS.items()) if info.kind == "control" for v in info.variants
    ]


def is_control_env(name: str) -> bool:
    """Whether ``name`` (a family or ``family:variant``) is a registered continuous-control family."""
    info = environment_info(name) if isinstance(name, str) else None
    return info is not None and info.kind == "control"


@dataclass
class ControlRunConfig:
    """A continuous-control run. Fields left None take the method's defaults in ``__post_init__``;
    the LLM-prior fields (cache, shots, skill_hold, alpha_0, alpha_min, backend options) are SAC-Prior's
    and refused for ``sac``."""

    env: str = "metaworld:reach-v3"
    method: str = "sac-prior"
    cache: CacheConfig | None = None  # sac-prior: CacheConfig() (static) when None
    backend: str = "embedded"
    model_path: str | None = None
    base_url: str | None = None
    model: str | None = None
    device: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = DEFAULT_STEPS  # training environment steps per seed
    eval_every: int = DEFAULT_EVAL_EVERY  # environment steps between evaluations; 0: after the last only
    eval_episodes: int = 5  # held-out instances, one deterministic episode each per evaluation
    train_games: int = 10  # training instances, played in turn
    shots: int | None = None  # sac-prior: demonstrations the skill Gaussians are fitted on (0: flat)
    skill_hold: int | None = None  # sac-prior: H, steps a skill is held
    target_kl_per_dim: float | None = None  # sac-prior: δ_KL / d of α's tuning (None: SACPriorConfig's)
    adapt: str = "none"  # sac-prior: F8 of the skill prior, "none" or "lora" (on the --shots demonstrations)
    prior_scale_q: bool = False  # sac-prior: Q on the prior's scale in F1 and the actor loss (SACPriorConfig)
    actor_on_prior: bool = False  # sac-prior: the actor a residual on the skill prior's mean and std
    skill_q_warmup: int = 0  # sac-prior: gradient steps until Q has its full say in F1 over skills (0: at once)
    actor_init_alpha: float | None = None  # sac-prior: the actor's α at the start (None: SACPriorConfig's 1.0)
    max_episode_steps: int | None = None  # None: the task's own (MetaWorld 500, MuJoCo 1000)
    learning_starts: int = 1_000  # warm-up steps before the first gradient step (both methods)
    batch_size: int = 256
    hidden_size: int = 256
    alpha_0: float | None = None  # sac-prior: F2 temperature of the skill choice when nothing hits (1.0)
    alpha_min: float | None = None  # sac-prior: … at a 100 % hit rate (0.25)
    out: Path = Path("runs/latest-control")
    tensorboard: bool = False  # TensorBoard scalars per seed under out/tensorboard/
    label: str | None = None  # the method's name in reports (default: method, cache mode, shots)

    def __post_init__(self) -> None:
        if not is_control_env(self.env):
            raise ConfigError(
                f"{self.env!r} is not a continuous-control environment; the control runner runs "
                f"{', '.join(control_envs())}"
            )
        family, _, task = (part.strip() for part in self.env.partition(":"))
        variants = ENVIRONMENTS[family].variants
        if task not in variants:
            hint = " (MetaWorld 3 names its tasks with -v3)" if task.endswith(("-v1", "-v2")) else ""
            raise ConfigError(
                f"name the task of {family}: one of {', '.join(f'{family}:{v}' for v in variants)}, "
                f"not {self.env!r}{hint}"
            )
        self.env = f"{family}:{task}"
        if self.method not in METHODS:
            raise ConfigError(f"unknown control method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("steps", "eval_episodes", "train_games", "batch_size", "hidden_size"):
            _check_int(name, getattr(self, name), 1)
        for name in ("eval_every", "learning_starts"):
            _check_int(name, getattr(self, name), 0)
        if self.max_episode_steps is not None:
            _check_int("max_episode_steps", self.max_episode_steps, 1)
        self.seeds = check_seeds(self.seeds)
        game_seeds(self.env, "train", self.train_games)  # refuses more instances than the split has
        game_seeds(self.env, "eval", self.eval_episodes)
        if self.method == "sac":
            self._refuse_prior_settings()
            self.label = self.label or self.default_label()
            return
        from priorcache.prior.registry import check_backend_options

        check_backend_options(self.backend, self.model_path, self.base_url, self.model)
        self.cache = self.cache if self.cache is not None else CacheConfig()
        if not isinstance(self.cache, CacheConfig):
            raise ConfigError(f"cache must be a CacheConfig, got {type(self.cache).__name__}")
        self.shots = DEFAULT_SHOTS if self.shots is None else _check_int("shots", self.shots, 0)
        game_seeds(self.env, "train", max(1, self.shots))  # demonstrations come from training instances
        self.skill_hold = (
            DEFAULT_SKILL_HOLD if self.skill_hold is None else _check_int("skill_hold", self.skill_hold, 1)
        )
        for flag in ("prior_scale_q", "actor_on_prior"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        _check_int("skill_q_warmup", self.skill_q_warmup, 0)
        if self.actor_init_alpha is not None and not (is_number(self.actor_init_alpha) and self.actor_init_alpha > 0):
            raise ConfigError(f"actor_init_alpha must be a number > 0, got {self.actor_init_alpha!r}")
        if self.adapt not in CONTROL_ADAPT:
            raise ConfigError(f"adapt must be one of {', '.join(CONTROL_ADAPT)} for control, not {self.adapt!r}")
        if self.adapt == "lora" and self.shots < 1:
            raise ConfigError("adapt 'lora' fine-tunes the skill prior on the demonstrations: give shots ≥ 1")
        kl = self.target_kl_per_dim
        if kl is not None and not (is_number(kl) and kl > 0):
            raise ConfigError(f"target_kl_per_dim must be a number > 0, got {self.target_kl_per_dim!r}")
        self.alpha_0 = 1.0 if self.alpha_0 is None else self.alpha_0
        self.alpha_min = 0.25 if self.alpha_min is None else self.alpha_min
        if not (is_number(self.alpha_0) and is_number(self.alpha_min) and 0 < self.alpha_min <= self.alpha_0):
            raise ConfigError(f"need 0 < alpha_min ≤ alpha_0, got {self.alpha_0!r} and {self.alpha_min!r}")
        self.label = self.label or self.default_label()

    def _refuse_prior_settings(self) -> None:
        given = [
            name
            for name, value, unset in (
                ("cache", self.cache, None),
                ("shots", self.shots, None),
                ("skill_hold", self.skill_hold, None),
                ("target_kl_per_dim", self.target_kl_per_dim, None),
                ("adapt", self.adapt, "none"),
                ("prior_scale_q", self.prior_scale_q, False),
                ("actor_on_prior", self.actor_on_prior, False),
                ("skill_q_warmup", self.skill_q_warmup, 0),
                ("actor_init_alpha", self.actor_init_alpha, None),
                ("alpha_0", self.alpha_0, None),
                ("alpha_min", self.alpha_min, None),
                ("backend", self.backend, "embedded"),
                ("model_path", self.model_path, None),
                ("base_url", self.base_url, None),
                ("model", self.model, None),
                ("device", self.device, "cpu"),
            )
            if value != unset
        ]
        if given:
            raise ConfigError(
                f"method 'sac' is Stable-Baselines3 SAC, without an LLM prior or a cache: {', '.join(given)} "
                "apply to sac-prior only"
            )

    @property
    def cache_mode(self) -> str:
        return self.cache.mode if self.cache is not None else "n/a"

    def default_label(self) -> str:
        """ "sac", "sac-prior-uncached", "sac-prior-static", … with "-0shot"/"-10shot" off the default 5 shots."""
        if self.method == "sac":
            return "sac"
        mode = "uncached" if self.cache_mode == "none" else self.cache_mode
        if mode == "kl-budget":
            mode += f"-{self.cache.kl_budget.target_kl:g}"
        shots = "" if self.shots == DEFAULT_SHOTS else f"-{self.shots}shot"
        kl = "" if self.target_kl_per_dim is None else f"-kl{self.target_kl_per_dim:g}"
        lora = "-lora" if self.adapt == "lora" else ""
        qn = "-qnorm" if self.prior_scale_q else ""
        res = "-residual" if self.actor_on_prior else ""
        warmup = f"-qwarmup{self.skill_q_warmup}" if self.skill_q_warmup else ""
        init = "" if self.actor_init_alpha is None else f"-ainit{self.actor_init_alpha:g}"
        # the cache's δ off its default: runs at other δ are other methods, never pooled under one label
        delta = self.cache.similarity_threshold
        delta_label = "" if delta == CacheConfig().similarity_threshold else f"-delta{float(delta)}"
        temp = ""
        if (self.alpha_0, self.alpha_min) != (1.0, 0.25):  # F2's temperatures off their defaults
            temp = f"-alpha{self.alpha_0:g}" + ("" if self.alpha_min == self.alpha_0 else f"-{self.alpha_min:g}")
        return f"sac-prior-{mode}{shots}{lora}{kl}{qn}{res}{delta_label}{temp}{warmup}{init}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["agent"] = self.method  # the readers of run folders (compare, report) index "agent"
        out["kind"] = "control"
        if self.cache is None:
            out["cache"] = {"mode": "n/a"}
            for name in ("backend", "model_path", "base_url", "model", "device"):
                out[name] = None
        return out


def _check_int(name: str, value: Any, low: int) -> int:
    if not is_int(value) or value < low:
        raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def make_learner(config: ControlRunConfig, env: TrainingInstances, seed: int, prior: SkillPriorParts | None) -> Any:
    """The learner of one seed of ``config`` on ``env``: SB3 SAC without a skill prior, else SAC-Prior
    with a new cache of ``config``'s settings serving ``prior``."""
    c = config
    shared = {
        "seed": seed,
        "hidden_size": c.hidden_size,
        "batch_size": c.batch_size,
        "learning_starts": c.learning_starts,
        "buffer_size": max(c.steps, c.batch_size),  # the whole budget
    }
    if prior is None:
        return SB3SAC(env, **shared)
    assert c.skill_hold is not None and c.alpha_0 is not None and c.alpha_min is not None
    return SACPriorLearner(
        env,
        prior.cache(c),
        skill_hold=c.skill_hold,
        alpha_0=c.alpha_0,
        alpha_min=c.alpha_min,
        target_kl_per_dim=c.target_kl_per_dim,
        prior_scale_q=c.prior_scale_q,
        actor_on_prior=c.actor_on_prior,
        skill_q_warmup=c.skill_q_warmup,
        actor_init_alpha=c.actor_init_alpha,
        **shared,
    )


def run_control(
    config: ControlRunConfig,
    backend: Any = None,
    encoder: Any = None,
    progress: bool = True,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``config`` (module docstring) and return its summary. ``backend``/``encoder`` may be passed
    to share loaded models (sac-prior); built from the config otherwise."""
    folder = plan_run_folder(Path(config.out), config.to_json(), None, resume=resume, overwrite=overwrite)
    if folder.state == "finished":
        return load_summary(folder.out)
    # Everything that can refuse (environment settings, demonstrations, backend) is done before the
    # folder is touched, so a bad invocation writes nothing.
    env_kwargs = {} if config.max_episode_steps is None else {"max_episode_steps": config.max_episode_steps}
    train_seeds = game_seeds(config.env, "train", config.train_games)
    probe = make_split_env(config.env, "train", train_seeds[0], **env_kwargs)
    try:
        prior = SkillPriorParts.build(config, probe, backend, encoder, progress) if config.method != "sac" else None
    finally:
        probe.close()
    out = folder.out
    with ExitStack() as stack:
        if not stack.enter_context(folder_lock(out / CHECKPOINT, blocking=False)):
            raise ConfigError(
                f"another priorcache process is running in --out {out}; wait for it or give another --out"
            )
        eval_envs = [
            (g, make_split_env(config.env, "eval", g, **env_kwargs))
            for g in game_seeds(config.env, "eval", config.eval_episodes)
        ]
        stack.callback(lambda: [env.close() for _, env in eval_envs])
        folder.prepare()
        atomic_write_json(out / "config.json", config.to_json())
        run = _Run(config, out, train_seeds, eval_envs, env_kwargs, prior, progress)
        if folder.state == "resume":
            run.resume()
        run.train()
        summary = run.summary()
        atomic_write_json(out / "summary.json", summary)
        remove_checkpoint(out)  # after the summary: a kill in between leaves a finished run
    return summary


class _Run:
    """The seeds of one run, their lines and per-seed facts, and the files they go to."""

    def __init__(
        self,
        config: ControlRunConfig,
        out: Path,
        train_seeds: list[int],
        eval_envs: list[tuple[int, Any]],
        env_kwargs: dict[str, Any],
        prior: SkillPriorParts | None,
        progress: bool,
    ) -> None:
        self.config, self.out, self.train_seeds, self.eval_envs = config, out, train_seeds, eval_envs
        self.env_kwargs, self.prior, self.progress = env_kwargs, prior, progress
        self.records: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.per_seed: list[dict[str, Any]] = []
        self.first_seed = 0
        self.resumed: dict[str, Any] | None = None
        self._resume_from: tuple[Progress, Path] | None = None  # a checkpoint inside the seed first_seed
        self.checkpoint_s = 0.0
        self.log = ScalarLog(out / "tensorboard" if config.tensorboard else None)

    def resume(self) -> None:
        """Keep what the checkpoint accounts for: the finished seeds, and the seed in training where its
        learner was checkpointed (SAC-Prior); an SB3 seed that was running starts again."""
        found = read_progress(self.out)
        seeds = self.config.seeds
        if found is None:  # killed before the first checkpoint: nothing to keep
            self.resumed = {"seeds_kept": [], "restarted_seed": seeds[0], "continued_at_step": None}
            self.log = ScalarLog(self.log.folder, resumed=(seeds[0], 0))
            return
        at, folder = found
        self.records = read_lines(self.out / "metrics.jsonl", at.metrics_lines)
        self.evals = read_lines(self.out / "evals.jsonl", at.eval_lines)
        kept = seeds[: at.seed_index]
        partial = read_json_object(self.out / "summary.json", "a run summary")
        self.per_seed = [s for s in partial.get("per_seed", []) if isinstance(s, dict) and s.get("seed") in kept]
        if sorted(s["seed"] for s in self.per_seed) != sorted(kept):
            raise ConfigError(
                f"{self.out}/summary.json lacks the facts of finished seeds {kept}: the folder was edited"
            )
        self.first_seed = at.seed_index
        running = seeds[at.seed_index] if at.seed_index < len(seeds) else None
        within = running is not None and (folder / _LEARNER).is_dir()
        self._resume_from = (at, folder) if within else None
        self.resumed = {
            "seeds_kept": kept,
            "restarted_seed": None if within else running,
            "continued_at_step": at.steps if within else None,
        }
        if running is not None:  # the stopped run's later events of that seed are written again
            self.log = ScalarLog(self.log.folder, resumed=(running, purge_from(at.steps, within)))
        if within:
            tqdm.write(f"resume: seeds {kept} are finished; seed {running} goes on from step {at.steps}")
        elif running is not None:
            tqdm.write(f"resume: seeds {kept} are finished and kept; seed {running} starts again from scratch")

    def train(self) -> None:
        config = self.config
        bar = tqdm(
            total=config.steps * len(config.seeds),
            initial=config.steps * self.first_seed,
            desc=f"{config.env} {config.label}",
            unit="step",
            disable=not self.progress,
        )
        try:
            for i in range(self.first_seed, len(config.seeds)):
                resume_from = self._resume_from if i == self.first_seed else None
                self.per_seed.append(self._train_seed(i, bar, resume_from))
                self._write_progress()
                # the seed is done: its lines are counted, no learner is kept
                self._checkpoint(Progress(seed_index=i + 1), None, {})
        finally:
            bar.close()
            self.log.close()

    def _checkpoint(self, progress: Progress, learner: Any, clock: dict[str, float]) -> None:
        """``progress`` (with the line counts filled in), and ``learner`` and the seed's ``clock`` when
        given, as the run's checkpoint (:mod:`priorcache.experiments.run_folder`'s folder and swap)."""
        progress.metrics_lines, progress.eval_lines = len(self.records), len(self.evals)
        start = time.perf_counter()
        if learner is None:
            write_checkpoint(self.out, progress, None, None)
        else:
            for stale in self.out.glob(f".{CHECKPOINT}.tmp-*"):  # left by a kill mid-write; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = make_temp_dir(self.out, f".{CHECKPOINT}.tmp-")
            try:
                learner.save(tmp / _LEARNER)
                atomic_write_json(tmp / _CLOCK, clock)
                atomic_write_json(tmp / "progress.json", asdict(progress))  # last: without it, no checkpoint
                swap_into_place(tmp, self.out / CHECKPOINT)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.checkpoint_s += time.perf_counter() - start

    def _train_seed(self, index: int, bar: Any, resume_from: tuple[Progress, Path] | None) -> dict[str, Any]:
        config, seed, learner = self.config, self.config.seeds[index], None
        env = TrainingInstances(
            config.env,
            self.train_seeds,
            seed,
            self.env_kwargs,
            on_step=lambda: bar.update(1),
            train_clock=lambda: learner.train_time() if learner is not None else 0.0,
        )
        clock = {"train": 0.0, "eval": 0.0, "before": 0.0}  # seconds; "before": of the run before a resume
        started = time.perf_counter()
        try:
            learner = make_learner(self.config, env, seed, self.prior)
            done = 0
            # the seed's training LLM queries, summed over its episodes for the TensorBoard curves
            queries = [sum(r["llm_calls"] + r["partial_calls"] for r in self.records if r["seed"] == seed)]

            def evaluate(done: int) -> None:
                begin = time.perf_counter()
                lines = evaluate_control(
                    learner,
                    self.eval_envs,
                    seed=seed,
                    after_episodes=env.started,
                    after_steps=done,
                    train_llm_queries=learner.llm_queries(),
                )
                self.evals.extend(lines)
                held = [line["episode_return"] for line in lines]
                self.log.held_out(
                    seed,
                    done,
                    learner.llm_queries(),
                    sum(line["success"] for line in lines) / len(lines),
                    sum(held) / len(held),
                )
                bar.set_postfix(held_out_return=f"{sum(held) / len(held):.1f}", llm=learner.llm_queries())
                clock["eval"] += time.perf_counter() - begin

            if resume_from is not None:
                at, folder = resume_from
                learner.restore(folder / _LEARNER, at.queries, at.episodes_done, at.steps)
                done = at.steps
                clock.update(json.loads((folder / _CLOCK).read_text()))
                bar.update(done)
            elif config.eval_every:
                evaluate(0)
            while done < config.steps:
                n = min(config.eval_every or config.steps, config.steps - done)
                begin = time.perf_counter()
                learner.learn(n)
                clock["train"] += time.perf_counter() - begin
                done += n
                if done == config.steps:
                    env.end_episode()  # the budget cuts the episode in progress; a chunk's end does not
                for record in env.take_finished():
                    queries[0] += record.llm_queries
                    self.log.episode(seed, record, record.end_step, queries[0])
                    self.records.append(record.to_json())
                evaluate(done)  # every chunk ends at an evaluation point
                self._write_progress()
                if learner.checkpoints and done < config.steps:
                    elapsed = {**clock, "before": clock["before"] + time.perf_counter() - started}
                    progress = Progress(index, env.started, done, learner.llm_queries(), done)
                    self._checkpoint(progress, learner, elapsed)
            facts = {
                "seed": seed,
                "env_steps": env.total_steps,
                "episodes": sum(r["seed"] == seed for r in self.records),
                "train_wall_time_s": clock["train"],
                "env_steps_per_s": env.total_steps / clock["train"] if clock["train"] > 0 else None,
                "eval_wall_time_s": clock["eval"],
                "wall_time_s": clock["before"] + time.perf_counter() - started,
                "llm_queries": learner.llm_queries(),
                **learner.info(),
            }
            if self.prior is not None and config.cache_mode != "none":
                learner.cache.save(self.out / "cache" / f"seed{seed}")
            return facts
        finally:
            env.close()

    def _held_out_and_training(self) -> dict[str, Any]:
        out: dict[str, Any] = {"held_out": summarise_control_held_out(self.evals)}
        if self.records:
            decision_unit = "action" if self.config.method == "sac" else "skill decision"
            out.update(summarise_control(self.records, decision_unit))
        return out

    def _write_progress(self) -> None:
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        atomic_write_text(self.out / "evals.jsonl", "".join(json.dumps(e) + "\n" for e in self.evals))
        atomic_write_json(
            self.out / "summary.json", {"partial": True, **self._held_out_and_training(), "per_seed": self.per_seed}
        )

    def summary(self) -> dict[str, Any]:
        config = self.config
        summary = self._held_out_and_training()
        steps = sum(s["env_steps"] for s in self.per_seed)
        train_wall = sum(s["train_wall_time_s"] for s in self.per_seed)
        eval_queries = [e["llm_queries"] for e in self.evals if e["llm_queries"] is not None]
        summary.update(
            {
                "env": config.env,
                "kind": "control",
                "agent": config.method,
                "method": config.method,
                "label": config.label,
                "cache_mode": config.cache_mode,
                "backend": config.backend if config.method != "sac" else None,
                "skill_hold": config.skill_hold,
                "demonstrations": self.prior.info if self.prior is not None else None,
                "eval_llm_queries": sum(eval_queries) if eval_queries else None,
                "env_steps_per_s": steps / train_wall if train_wall > 0 else None,
                "train_wall_time_s": train_wall,
                "eval_wall_time_s": sum(s["eval_wall_time_s"] for s in self.per_seed),
                "wall_time_s": sum(s["wall_time_s"] for s in self.per_seed),
                # checkpoints of this process (a resumed run: since the resume)
                "checkpoint_time_s": self.checkpoint_s,
                "per_seed": self.per_seed,
                "resumed": self.resumed,
            }
        )
        return summary
