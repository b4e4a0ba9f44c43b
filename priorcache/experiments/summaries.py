"""Reading a run folder's files, checked: ``summary.json``, ``config.json`` and the lines of
``metrics.jsonl`` / ``evals.jsonl`` (what :mod:`priorcache.experiments.runner` writes), and whether
two runs can be compared like for like.

The readers (``priorcache compare``, ``report``, ``kl-report``) index these files' fields directly,
so every one of them reads through here: a file that is not JSON, not a JSON object, or lacks a
field a reader uses is a :class:`~priorcache.errors.ConfigError` naming the file (and line) and
what is wrong, never a ``KeyError`` from the middle of a table.

Shapes checked:
- ``summary.json``: an object. A finished run's holds the metrics of ``SUMMARY_FIELDS``; a run in
  progress (or interrupted) writes ``"partial": true`` after every episode, with the same metrics
  once it has played one (before that it holds ``partial`` and perhaps ``held_out`` only).
  ``held_out`` is null or an object with ``success``/``return`` statistics and ``games``.
- ``config.json``: an object naming ``env``, ``agent`` and a ``cache`` object with its ``mode``.
- every line of ``metrics.jsonl`` / ``evals.jsonl``: an object with at least the fields its
  readers index (``RECORD_KEYS`` for every reader, ``RECORD_FIELDS`` where the summary is
  recomputed, ``EVAL_FIELDS``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from priorcache.envs.registry import environment_info
from priorcache.errors import ConfigError
from priorcache.validation import is_json_int

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"

Check = tuple[Callable[[Any], bool], str]  # (test, what the value must be)


def _number(x: Any) -> bool:
    # Non-finite values are let through: they format as nan/inf, and the writer refuses them anyway.
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(is_json_int(v) for v in x)


def _stat(x: Any) -> bool:
    """A ``mean_ci95`` result."""
    return isinstance(x, dict) and _number(x.get("mean")) and _number(x.get("ci95")) and is_json_int(x.get("n"))


def _held_out(x: Any) -> bool:
    """``summarise_held_out``'s result, or None (no evaluations)."""
    if x is None:
        return True
    return isinstance(x, dict) and _stat(x.get("success")) and _stat(x.get("return")) and is_json_int(x.get("games"))


_INT: Check = (is_json_int, "an integer")
_NUMBER: Check = (_number, "a number")
_LIST: Check = (lambda x: isinstance(x, list), "a list")
_STAT: Check = (_stat, "an object with numbers mean, ci95 and integer n")
_SUCCESS: Check = (lambda x: isinstance(x, bool) or _number(x), "true/false")

#: The metrics every summary with episodes holds, as the readers index them.
SUMMARY_FIELDS: dict[str, Check] = {
    "episodes": _INT,
    "seeds": (_int_list, "a list of integers"),
    "steps": _INT,
    "llm_queries": _INT,
    "decision_latency_ms": (
        lambda x: isinstance(x, dict) and _number(x.get("p50")) and _number(x.get("p95")),
        "an object with numbers p50 and p95",
    ),
    "success_rate": _STAT,
    "mean_return": _STAT,
}
#: Fields a summary may hold, checked when present.
_OPTIONAL_SUMMARY_FIELDS: dict[str, Check] = {
    "partial": (lambda x: isinstance(x, bool), "true or false"),
    "env": (lambda x: isinstance(x, str), "a string"),
    "agent": (lambda x: isinstance(x, str), "a string"),
    "env_kwargs": (lambda x: isinstance(x, dict), "an object"),
    "env_source": (lambda x: x is None or isinstance(x, str), "a string or null"),
    "held_out": (_held_out, "null or an object with success and return statistics and integer games"),
}
#: What every reader of a metrics.jsonl line indexes.
RECORD_KEYS: dict[str, Check] = {"seed": _INT, "episode": _INT}
#: What ``metrics.summarise`` indexes in a metrics.jsonl line (the report recomputes summaries).
RECORD_FIELDS: dict[str, Check] = {
    **RECORD_KEYS,
    "success": _SUCCESS,
    "episode_return": _NUMBER,
    "steps": _INT,
    **{
        name: _NUMBER
        for name in (
            "llm_calls",
            "partial_calls",
            "lookups",
            "hits",
            "exact_hits",
            "similar_hits",
            "refreshes",
            "prompt_tokens",
            "continuation_tokens",
            "llm_time_s",
            "train_time_s",
            "wall_time_s",
        )
    },
    "decision_times_ms": _LIST,
    "audit_epsilons": _LIST,
    "audit_kls": _LIST,
}
#: What ``metrics.summarise_held_out`` indexes in an evals.jsonl line.
EVAL_FIELDS: dict[str, Check] = {
    "seed": _INT,
    "after_episodes": _INT,
    "game_seed": _INT,
    "train_steps": _NUMBER,
    "train_llm_queries": _NUMBER,
    "success": _SUCCESS,
    "episode_return": _NUMBER,
    "steps": _INT,
    "llm_queries": (lambda x: x is None or _number(x), "a number or null"),
}
#: What the report and the KL report index in config.json.
CONFIG_FIELDS: dict[str, Check] = {
    "env": (lambda x: isinstance(x, str) and bool(x), "a non-empty string"),
    "agent": (lambda x: isinstance(x, str) and bool(x), "a non-empty string"),
    "cache": (lambda x: isinstance(x, dict) and isinstance(x.get("mode"), str), "an object with a string mode"),
}
_OPTIONAL_CONFIG_FIELDS: dict[str, Check] = {
    "env_kwargs": (lambda x: isinstance(x, dict), "an object"),
    "seeds": (_int_list, "a list of integers"),
    "label": (lambda x: x is None or isinstance(x, str), "a string or null"),
}


def problems(data: Mapping[str, Any], fields: Mapping[str, Check], optional: bool = False) -> list[str]:
    """What is wrong with ``data`` against ``fields``: "missing X" or "X must be …, got …" for each
    field; ``optional``: absent fields are fine, present ones are checked."""
    out = []
    for name, (test, what) in fields.items():
        if name not in data:
            if not optional:
                out.append(f"missing {name}")
        elif not test(data[name]):
            out.append(f"{name} must be {what}, got {_short(data[name])}")
    return out


def describe(found: list[str]) -> str:
    """``problems``' findings as one phrase: "missing a, b; c must be …"."""
    missing = [p.removeprefix("missing ") for p in found if p.startswith("missing ")]
    rest = [p for p in found if not p.startswith("missing ")]
    return "; ".join(([f"missing {', '.join(missing)}"] if missing else []) + rest)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a ConfigError naming the file when it is missing, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"damaged {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"damaged {path}: {what} must be a JSON object, got {_json_type(data)}")
    return data


def check_summary(summary: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """``summary`` (read from ``path``) if it has the shape above, else a ConfigError listing what is wrong."""
    found = problems(summary, _OPTIONAL_SUMMARY_FIELDS, optional=True)
    # A partial summary written before the first episode has no metrics yet; once it has episodes it has them all.
    if summary.get("partial") is not True or "episodes" in summary:
        found += problems(summary, SUMMARY_FIELDS)
    if found:
        kind = "a partial run's summary" if summary.get("partial") is True else "a finished run's summary"
        raise ConfigError(f"damaged {path} ({kind}): {describe(found)}")
    return summary


def load_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json, checked (see the module docstring); a clear error when the folder is not a run."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path} does not exist")
    return check_summary(read_json_object(path, "a run summary"), path)


def load_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json, checked for the fields the readers index."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path} is missing")
    config = read_json_object(path, "a run config")
    found = problems(config, CONFIG_FIELDS) + problems(config, _OPTIONAL_CONFIG_FIELDS, optional=True)
    if found:
        raise ConfigError(f"damaged {path}: {describe(found)}")
    return config


def read_jsonl(path: Path, fields: Mapping[str, Check]) -> list[dict[str, Any]]:
    """The lines of a .jsonl file (blank lines skipped), each a JSON object with ``fields``; a
    ConfigError naming the file and line otherwise."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"damaged {path}, line {number}: not valid JSON ({e})") from None
        if not isinstance(item, dict):
            raise ConfigError(f"damaged {path}, line {number}: a JSON object is expected, got {_json_type(item)}")
        found = problems(item, fields)
        if found:
            raise ConfigError(f"damaged {path}, line {number}: {describe(found)}")
        out.append(item)
    return out


def check_records(records: list[dict[str, Any]], where: Path | str) -> None:
    """A ConfigError unless every metrics.jsonl line has what ``metrics.summarise`` indexes."""
    for record in records:
        found = problems(record, RECORD_FIELDS)
        if found:
            raise ConfigError(
                f"damaged {where}: the line of seed {record.get('seed')}, episode {record.get('episode')}: "
                + describe(found)
            )


# ------------------------------------------------------------------ comparing two runs


def env_label(env: str, env_kwargs: Mapping[str, Any] | None) -> str:
    """The environment with its variant, "textworld:tw-simple", whether the run named the variant in
    ``env`` or through the family's variant keyword (the registry's) in ``env_kwargs``."""
    kwargs = env_kwargs or {}
    info = environment_info(env)
    variant = kwargs.get(info.variant_kwarg) if info is not None and info.variant_kwarg else None
    return f"{env}:{variant}" if variant and ":" not in env else env


def _other_env_kwargs(env: str, env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``env_kwargs`` without the variant keyword, which ``env_label`` already accounts for."""
    info = environment_info(env)
    skip = info.variant_kwarg if info is not None else None
    return {k: v for k, v in (env_kwargs or {}).items() if k != skip}


#: config.json settings that make two runs' numbers comparable: the training and evaluation protocol.
PROTOCOL = ("episodes", "seeds", "train_games", "eval_games", "max_episode_steps", "eval_policy")
#: config.json keys that never matter to a comparison (where the run was written, its report label).
_IRRELEVANT = {"out", "cache_path", "label"}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def comparison_problems(
    a: tuple[Path, dict[str, Any], dict[str, Any] | None], b: tuple[Path, dict[str, Any], dict[str, Any] | None]
) -> tuple[list[str], list[str]]:
    """Why runs ``a`` and ``b``, each (folder, summary, config or None), are not like for like, and
    the other settings in which they differ (for information: the cache's settings, which are what a
    comparison is usually about).

    Not like for like: another environment (family, variant or settings), another agent (comparing
    cache modes of one agent is the point; another agent type is another experiment), another
    protocol (episodes per seed, seeds, training and held-out games, step limit, evaluation policy),
    or a run that is not finished."""
    found: list[str] = []
    (path_a, sum_a, cfg_a), (path_b, sum_b, cfg_b) = a, b
    for path, summary in ((path_a, sum_a), (path_b, sum_b)):
        if summary.get("partial") is True:
            found.append(f"{path} is a partial run (unfinished or interrupted): its numbers cover only part of it")

    def fact(summary: dict[str, Any], config: dict[str, Any] | None, key: str) -> Any:
        return (config or {}).get(key, summary.get(key))

    env_a, env_b = (fact(s, c, "env") for s, c in ((sum_a, cfg_a), (sum_b, cfg_b)))
    if isinstance(env_a, str) and isinstance(env_b, str):
        kwargs_a, kwargs_b = fact(sum_a, cfg_a, "env_kwargs"), fact(sum_b, cfg_b, "env_kwargs")
        label_a, label_b = env_label(env_a, kwargs_a), env_label(env_b, kwargs_b)
        rest_a, rest_b = _other_env_kwargs(env_a, kwargs_a), _other_env_kwargs(env_b, kwargs_b)
        if label_a != label_b:
            found.append(f"different environments: {label_a} vs {label_b}")
        elif rest_a != rest_b:
            found.append(f"different settings of {label_a}: {rest_a} vs {rest_b}")
    agents = [fact(s, c, "agent") for s, c in ((sum_a, cfg_a), (sum_b, cfg_b))]
    if None not in agents and agents[0] != agents[1]:
        found.append(f"different agents: {agents[0]} vs {agents[1]} (compare runs of one agent, e.g. cache modes)")
    if cfg_a is not None and cfg_b is not None:
        for key in PROTOCOL:
            if key in cfg_a and key in cfg_b and cfg_a[key] != cfg_b[key]:
                found.append(f"different {key}: {cfg_a[key]} vs {cfg_b[key]}")
    else:
        # Without both configs, the protocol is what the summaries say: seeds, episodes and held-out games.
        if sum_a.get("seeds") != sum_b.get("seeds"):
            found.append(f"different seeds: {sum_a.get('seeds')} vs {sum_b.get('seeds')}")
        if sum_a.get("episodes") != sum_b.get("episodes"):
            found.append(f"different numbers of episodes: {sum_a.get('episodes')} vs {sum_b.get('episodes')}")
        games = [(s.get("held_out") or {}).get("games") for s in (sum_a, sum_b)]
        if games[0] != games[1]:
            found.append(f"different numbers of held-out games: {games[0]} vs {games[1]}")
    others: list[str] = []
    if cfg_a is not None and cfg_b is not None:
        checked = {"env", "env_kwargs", "agent", *PROTOCOL, *_IRRELEVANT}
        flat_a, flat_b = _flatten(cfg_a), _flatten(cfg_b)
        for key in sorted(set(flat_a) | set(flat_b)):
            if key.split(".")[0] in checked:
                continue
            if key in flat_a and key in flat_b and flat_a[key] != flat_b[key]:
                others.append(f"{key}: {_short(flat_a[key])} vs {_short(flat_b[key])}")
    return found, others
