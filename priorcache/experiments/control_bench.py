"""``priorcache bench control``: Stable-Baselines3 SAC and SAC-Prior (uncached, every cache mode, and the
0-/10-shot skill priors) on the control tasks, on the same seeds and environment steps (docs/design.md §1).

Each (task, method, seed) is one run of :mod:`priorcache.experiments.control_runner` in
``OUT/runs/<task>/<method>/seed<N>/``, scheduled as ``bench text`` schedules its cells
(:func:`priorcache.experiments.bench.run_cells`): resumable (a finished run is kept, a killed one goes on
from its checkpoint), shareable between processes by folder locks, and a finished run of other settings
is refused, not overwritten. After every run the control report (``control_results.md``/``.csv``/
``.json``, ``control_curves.png``, ``control_return_vs_queries.png``) is re-rendered from what is on disk.
The LLM backend and the sentence encoder are loaded once and shared by every SAC-Prior run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from priorcache.cache.config import MODES, CacheConfig
from priorcache.errors import ConfigError
from priorcache.experiments.bench import KL_TARGETS, SharedModels, can_resume, cell_dir, run_cells
from priorcache.experiments.control_runner import (
    DEFAULT_EVAL_EVERY,
    DEFAULT_SHOTS,
    DEFAULT_SKILL_HOLD,
    DEFAULT_STEPS,
    PRIOR_LED_SKILL_ALPHA,
    PRIOR_LED_SKILL_Q_WARMUP,
    PRIOR_LED_TARGET_KL,
    ControlRunConfig,
    control_envs,
    is_control_env,
    run_control,
)
from priorcache.experiments.report import write_report
from priorcache.prior.registry import check_backend_options
from priorcache.validation import check_seeds


class ControlMethod(NamedTuple):
    method: str  # "sac" or "sac-prior"
    cache_mode: str | None = None
    cache_settings: dict[str, Any] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    shots: int | None = None  # None: the bench's shots
    prior_scale_q: bool = False
    actor_on_prior: bool = False
    target_kl_per_dim: float | None = None
    skill_alpha: float | None = None  # F2's α_0 = α_min of the skill choice (None: the defaults 1.0 and 0.25)
    adapt: str = "none"
    skill_q_warmup: int = 0


def _methods() -> dict[str, ControlMethod]:
    methods = {"sac": ControlMethod("sac")}
    for mode in MODES:  # the cache modes come from the cache itself, so new ones join here
        if mode == "kl-budget":
            for target in KL_TARGETS:
                methods[f"sac-prior-kl-budget-{target:g}"] = ControlMethod(
                    "sac-prior", mode, {"kl_budget": {"target_kl": target}}
                )
        else:
            methods[f"sac-prior-{'uncached' if mode == 'none' else mode}"] = ControlMethod("sac-prior", mode)
    for shots in (0, 10):  # the shot comparison, beside the default (static) cache's 5 shots
        methods[f"sac-prior-static-{shots}shot"] = ControlMethod("sac-prior", "static", shots=shots)
    # F8 for control, the skill prior LoRA-fine-tuned on the demonstrations: alone ("-lora"), and with
    # the prior leading (Q on the prior's scale, the actor a residual on the prior's mean and std, a tight
    # KL, a fixed skill temperature; with or without the skill-level warm-up). The prior-led rows are
    # uncached, static with exact-text hits only (δ 1) and kl-budget: a sharp prior served by MiniLM
    # similarity at δ 0.92 or 0.98 picked wrong skills on push-v3, and kl-budget's similar hits lost it too
    # (measured).
    for mode in MODES:
        name = "uncached" if mode == "none" else mode
        settings: dict[str, Any] = {}
        if mode == "kl-budget":
            name += f"-{DEFAULT_KL_TARGET:g}"
            settings = {"kl_budget": {"target_kl": DEFAULT_KL_TARGET}}
        methods[f"sac-prior-{name}-lora"] = ControlMethod("sac-prior", mode, settings, adapt="lora")
        if mode == "adaptive":
            continue
        delta = ""
        if mode == "static":
            settings, delta = {"similarity_threshold": 1.0}, "-delta1.0"
        # The same settings over the 0-shot prior (no "-lora"): on MuJoCo the LoRA prior learns the
        # demonstrator's segmentation, which the 0-shot prior's one walking skill beats (measured).
        for adapt, adapted in (("lora", "-lora"), ("none", "")):
            led = f"sac-prior-{name}{adapted}-kl{PRIOR_LED_TARGET_KL:g}-qnorm-residual{delta}"
            led += f"-alpha{PRIOR_LED_SKILL_ALPHA:g}"
            methods[led] = ControlMethod(
                "sac-prior",
                mode,
                settings,
                adapt=adapt,
                prior_scale_q=True,
                actor_on_prior=True,
                target_kl_per_dim=PRIOR_LED_TARGET_KL,
                skill_alpha=PRIOR_LED_SKILL_ALPHA,
            )
            if mode != "kl-budget":  # … and with Q let into the skill choice gradually (--prior-led's settings)
                warmup = PRIOR_LED_SKILL_Q_WARMUP
                methods[f"{led}-qwarmup{warmup}"] = methods[led]._replace(skill_q_warmup=warmup)
    return methods


#: The kl-budget target of the default table's and the LoRA methods' kl-budget rows.
DEFAULT_KL_TARGET = 0.05


#: method name -> how it runs.
CONTROL_METHODS: dict[str, ControlMethod] = _methods()
#: The table's methods when none are named: plain RL, the uncached reference and every cache mode at
#: the default KL target (the other targets and the shot comparison are asked for by name).
DEFAULT_CONTROL_METHODS = [
    "sac",
    "sac-prior-uncached",
    "sac-prior-static",
    "sac-prior-adaptive",
    f"sac-prior-kl-budget-{DEFAULT_KL_TARGET:g}",
]


@dataclass
class ControlBenchConfig:
    out: Path = Path("runs/bench-control")
    envs: list[str] = field(default_factory=control_envs)
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_CONTROL_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = DEFAULT_STEPS
    eval_every: int = DEFAULT_EVAL_EVERY
    eval_episodes: int = 5
    train_games: int = 10
    max_episode_steps: int | None = None  # None: the task's own (MetaWorld 500, MuJoCo 1000)
    shots: int = DEFAULT_SHOTS
    skill_hold: int = DEFAULT_SKILL_HOLD
    backend: str = "embedded"
    model_path: str | None = None
    base_url: str | None = None
    model: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        not_control = [env for env in self.envs if not is_control_env(env)]
        if not_control:
            raise ConfigError(f"bench control runs control tasks ({', '.join(control_envs())}), not {not_control}")
        unknown = [m for m in self.methods if m not in CONTROL_METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {list(CONTROL_METHODS)}")
        if not self.envs or not self.methods:
            raise ConfigError("bench control needs at least one task and method")
        check_backend_options(self.backend, self.model_path, self.base_url, self.model)
        self.seeds = check_seeds(self.seeds)
        for env in self.envs:  # every cell's settings are checked before the first run starts
            for method in self.methods:
                self.run_config(env, method, self.seeds[0])

    def run_config(self, env: str, method: str, seed: int) -> ControlRunConfig:
        m = CONTROL_METHODS[method]
        common = {
            "env": env,
            "method": m.method,
            "seeds": [seed],
            "steps": self.steps,
            "eval_every": self.eval_every,
            "eval_episodes": self.eval_episodes,
            "train_games": self.train_games,
            "max_episode_steps": self.max_episode_steps,
            "out": cell_dir(self.out, env, method, seed),
            "label": method,
        }
        if m.method == "sac":
            return ControlRunConfig(**common)
        return ControlRunConfig(
            **common,
            cache=CacheConfig.from_dict({"mode": m.cache_mode, **m.cache_settings}),
            shots=self.shots if m.shots is None else m.shots,
            prior_scale_q=m.prior_scale_q,
            actor_on_prior=m.actor_on_prior,
            target_kl_per_dim=m.target_kl_per_dim,
            alpha_0=m.skill_alpha,
            alpha_min=m.skill_alpha,
            adapt=m.adapt,
            skill_q_warmup=m.skill_q_warmup,
            skill_hold=self.skill_hold,
            backend=self.backend,
            model_path=self.model_path,
            base_url=self.base_url,
            model=self.model,
            device=self.device,
        )


def run_control_bench(
    config: ControlBenchConfig,
    backend: Any = None,
    encoder: Any = None,
    progress: bool = True,
    on_run: Callable[[ControlRunConfig, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every missing (task, method, seed) cell, then write the report; returns the report."""
    cells = [config.run_config(env, m, seed) for env in config.envs for m in config.methods for seed in config.seeds]
    models = SharedModels(config, backend, encoder)

    def run_cell(cell: ControlRunConfig) -> None:
        llm: tuple[Any, Any] = (None, None)
        if cell.method == "sac-prior":  # a LoRA-adapted prior loads its own fine-tuned model (one per task)
            llm = (None if cell.adapt == "lora" else models.backend(), models.encoder())
        resume = can_resume(cell)
        summary = run_control(cell, *llm, progress=False, resume=resume, overwrite=not resume)
        if on_run is not None:
            on_run(cell, summary)
        write_report(Path(config.out))

    run_cells(cells, run_cell, "bench control", progress)
    return write_report(Path(config.out))["control"]
