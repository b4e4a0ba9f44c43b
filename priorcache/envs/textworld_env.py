"""TextWorld games as Gymnasium environments with a Markov state text φ(s) (docs/design.md §5).

Games come from TextWorld's built-in challenges (``tw-simple``, ``tw-coin_collector``,
``tw-treasure_hunter``, ``tw-cooking``), are generated offline from (challenge, settings, seed)
and cached on disk, so a game is generated once and every later run plays the same file.

The wrapped game speaks TextWorld's old API (cumulative score, a single ``done``); this module turns
it into the Gymnasium 5-tuple with per-step rewards, ``terminated`` on win/loss and ``truncated``
at the step limit. ``info["state_text"]`` is the state description the prior cache keys on: the
room description plus the inventory, never the last action's feedback nor the step count.

**Oracle** (reactive): ``oracle_action()`` is the first command of TextWorld's own
``policy_commands``, the quest solver's plan from the *current* state, so it recovers after any
detour (measured: after 4 random admissible commands it still wins every challenge, seed 0,
three trials each). The plan is read from a second interpreter that replays the episode's
commands (``ShadowPlanner``), about 5-15 ms per step, paid only when the oracle is asked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from priorcache.envs.base import PRINTABLE, ShadowPlanner, TextEnv, clean_command
from priorcache.envs.checks import (
    build_game_folder,
    check_game_seed,
    check_max_episode_steps,
    games_root,
    read_meta,
)
from priorcache.errors import ConfigError, UnknownEnvironmentError
from priorcache.io import cache_root
from priorcache.validation import is_int

#: The TextWorld challenges this environment can generate, with a one-line description each.
CHALLENGES: Mapping[str, str] = MappingProxyType(
    {
        "tw-simple": "fetch a food item across a small house and put it on the stove",
        "tw-coin_collector": "walk through a chain of rooms to find and take a coin",
        "tw-treasure_hunter": "find and take a named object somewhere in the house",
        "tw-cooking": "find the recipe's ingredients, prepare them and eat the meal",
    }
)

#: Settings used when the caller gives none; caller settings override them key by key.
#: Small on purpose: each game is solvable in a handful of steps (walkthroughs of ~3-15 commands)
#: so that agents and tests see wins within a few dozen steps.
DEFAULT_SETTINGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "tw-simple": MappingProxyType({"rewards": "dense", "goal": "detailed", "test": False}),
        "tw-coin_collector": MappingProxyType({"level": 5}),
        "tw-treasure_hunter": MappingProxyType({"level": 5}),
        "tw-cooking": MappingProxyType(
            {
                "recipe": 1,
                "take": 1,
                "go": 6,
                "open": True,
                "cook": True,
                "cut": True,
                "drop": False,
                "recipe_seed": 0,
                "split": None,
            }
        ),
    }
)

# Interpreter meta-commands are not moves in the world: quit/restart leave the interpreter waiting
# for a yes/no answer (every later command is swallowed), save/script/transcript write files into the
# working directory and restore reloads a state behind TextWorld's own state tracker. They are
# answered by the wrapper instead of being passed to the game.
_META_COMMANDS = frozenset({"quit", "q", "restart", "save", "restore", "script", "unscript", "noscript", "transcript"})

_GAME_FILE = "game.z8"
# Bumped when the on-disk layout or the way walkthroughs are chosen changes, so that old cached
# games are not silently reused under a new meaning.
_CACHE_FORMAT = 1


def describe_state(
    description: str,
    inventory: str,
    locked: Iterable[str] = (),
    outcome: str | None = None,
) -> str:
    """Return φ(s): room description, inventory and the lock state of what is in view, on one line.

    Only state is included (where the player is, what the room shows, what is carried), so the
    same game state always maps to the same text whatever action led there. The game prints a
    locked door or container exactly like a closed one ("a closed wooden door"), so ``locked``
    names the locked things the description mentions; without it unlocking would not change φ(s).
    ``outcome`` ("won"/"lost") marks a finished game: after a loss the interpreter no longer
    answers, so description and inventory are those of the state before the losing move.
    """
    room = " ".join((description or "").split())
    carried = " ".join((inventory or "").split())
    parts = [room, carried]
    parts += [f"The {name} is locked." for name in sorted(set(locked))]
    if outcome:
        parts.append(f"The game is over: you {outcome}.")
    return " ".join(p for p in parts if p)


def locked_in_view(facts: Iterable[Any], description: str) -> list[str]:
    """Names of locked entities (from TextWorld ``facts``) that ``description`` mentions."""
    text = " ".join((description or "").split()).lower()
    names = {
        prop.arguments[0].name
        for prop in facts or ()
        if prop.name == "locked" and prop.arguments and prop.arguments[0].name
    }
    return sorted(n for n in names if n.lower() in text)


def default_games_dir() -> Path:
    """Where generated games are kept unless ``games_dir`` is given.

    ``$PRIORCACHE_CACHE_DIR/textworld_games`` if set, else
    ``$XDG_CACHE_HOME/priorcache/textworld_games``, else ``~/.cache/priorcache/textworld_games``.
    """
    return cache_root() / "textworld_games"


def _challenge_parser(challenge: str) -> argparse.ArgumentParser:
    import textworld.challenges

    _, _, add_arguments = textworld.challenges.CHALLENGES[challenge]
    parser = argparse.ArgumentParser(prog=challenge, add_help=False)
    add_arguments(parser)
    return parser


def resolve_settings(challenge: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``settings`` over the challenge defaults and validate keys and values.

    The valid keys, their choices and types are read from the challenge's own argument parser, so
    they follow the installed TextWorld version.

    Raises:
        UnknownEnvironmentError: unknown challenge, unknown key (the message lists the valid
            ones) or a value of the wrong type / outside the allowed choices.
    """
    if challenge not in CHALLENGES:
        raise UnknownEnvironmentError(f"unknown TextWorld challenge {challenge!r}; choose one of {sorted(CHALLENGES)}")
    if settings is not None and not isinstance(settings, Mapping):
        raise UnknownEnvironmentError(f"settings for {challenge} must be a mapping, got {type(settings).__name__}")
    actions = {
        a.dest: a
        for a in _challenge_parser(challenge)._actions  # argparse offers no public accessor
        if a.dest != "help"
    }
    merged: dict[str, Any] = {k: a.default for k, a in actions.items()}
    merged.update(DEFAULT_SETTINGS[challenge])
    for key, value in (settings or {}).items():
        if key not in actions:
            raise UnknownEnvironmentError(f"unknown setting {key!r} for {challenge}; valid settings: {sorted(actions)}")
        merged[key] = value
    for key, action in actions.items():
        value = merged[key]
        flag = action.nargs == 0  # store_true switches
        if flag:
            ok = isinstance(value, bool)
            expected = "a bool"
        elif action.type is int:
            ok = is_int(value)
            expected = "an int"
            if ok:
                merged[key] = value = int(value)  # a numpy integer would not go into game_key's JSON
        else:
            ok = value is None or isinstance(value, str)
            expected = "a str"
        if value is None and action.default is None and not action.required:
            ok = True  # an optional setting left unset (tw-cooking's split)
        if not ok:
            raise UnknownEnvironmentError(f"setting {key!r} of {challenge} must be {expected}, got {value!r}")
        if action.choices is not None and value is not None and value not in action.choices:
            raise UnknownEnvironmentError(
                f"setting {key!r} of {challenge} must be one of {list(action.choices)}, got {value!r}"
            )
        if value is None and action.required:
            raise UnknownEnvironmentError(f"setting {key!r} of {challenge} is required")
    return merged


def game_key(challenge: str, settings: Mapping[str, Any], seed: int) -> str:
    """A stable folder name for a game: readable prefix plus a hash of everything that shapes it."""
    import textworld

    blob = json.dumps(
        {
            "challenge": challenge,
            "settings": dict(settings),
            "seed": seed,
            "textworld": textworld.__version__,
            "format": _CACHE_FORMAT,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    return f"{challenge}-seed{seed}-{digest}"


@dataclass(frozen=True)
class GameFiles:
    """A generated game on disk and what was recorded about it when it was made."""

    folder: Path
    game_path: Path
    walkthrough: tuple[str, ...]
    max_score: int
    meta: Mapping[str, Any]


def _read_game(folder: Path) -> GameFiles | None:
    """Load a finished game folder, or None if it is incomplete or not ours."""
    game_path = folder / _GAME_FILE
    # The compiler writes the game's description next to the story file; both are needed to play.
    meta = read_meta(folder, _CACHE_FORMAT, (_GAME_FILE, game_path.with_suffix(".json").name))
    if meta is None:
        return None
    try:
        walkthrough = tuple(str(c) for c in meta["walkthrough"])
        max_score = int(meta["max_score"])
    except (ValueError, KeyError, TypeError):
        return None
    return GameFiles(folder, game_path, walkthrough, max_score, MappingProxyType(meta))


def _start(game_path: Path, infos: Any) -> Any:
    """``textworld.start`` without Jericho's per-load warning about TextWorld's own games.

    Jericho only knows published Infocom-era games and warns for every other file that it will
    not detect score changes itself; TextWorld tracks score and progress on its side, so the
    warning says nothing about these games.
    """
    import textworld

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is not fully supported")
        return textworld.start(str(game_path), infos)


def _plays_to_win(game_path: Path, commands: list[str]) -> tuple[bool, int]:
    """Play ``commands`` from the start; return (won, max_score)."""
    import textworld

    infos = textworld.EnvInfos(won=True, lost=True, max_score=True)
    env = _start(game_path, infos)
    try:
        state = env.reset()
        max_score = int(state["max_score"])
        for command in commands:
            state, _, done = env.step(command)
            if done:
                break
        return bool(state["won"]), max_score
    finally:
        env.close()


def _winning_walkthrough(game_path: Path, game: Any) -> tuple[list[str], int]:
    """Pick a command list that provably wins the game by playing it once.

    The quest solver's plan from the initial state (``policy_commands``) is tried first because it
    is the shortest; the generator's recorded walkthrough is the fallback. Asking for
    ``policy_commands`` only here keeps its per-step planning cost out of every episode.
    """
    import textworld

    env = _start(game_path, textworld.EnvInfos(policy_commands=True))
    try:
        plan = list(env.reset()["policy_commands"] or [])
    finally:
        env.close()
    candidates = [plan, list(game.walkthrough or [])]
    for commands in candidates:
        if not commands:
            continue
        won, max_score = _plays_to_win(game_path, commands)
        if won:
            return commands, max_score
    raise UnknownEnvironmentError(
        f"generated game {game_path} cannot be won by its walkthrough; try another seed or settings"
    )


def _generate_game(challenge: str, settings: Mapping[str, Any], seed: int, folder: Path) -> dict[str, Any]:
    """Generate, compile and certify one game into ``folder``; return its metadata."""
    import textworld
    import textworld.challenges
    from textworld.generator import compile_game

    start = time.perf_counter()
    _, make, _ = textworld.challenges.CHALLENGES[challenge]
    options = textworld.GameOptions()
    options.seeds = seed
    options.path = str(folder / _GAME_FILE)
    options.force_recompile = True
    try:
        # Challenges validate their own ranges (level 1-300, take <= recipe, ...) with
        # ValueError or assert; surface those as settings errors.
        game = make(dict(settings), options)
    except (ValueError, AssertionError) as exc:
        raise UnknownEnvironmentError(f"TextWorld rejected settings {dict(settings)} for {challenge}: {exc}") from exc
    compiled = Path(compile_game(game, options))
    if compiled != folder / _GAME_FILE:
        raise UnknownEnvironmentError(f"TextWorld compiled {challenge} to {compiled}, not {folder}")
    walkthrough, max_score = _winning_walkthrough(compiled, game)
    return {
        "format": _CACHE_FORMAT,
        "challenge": challenge,
        "settings": dict(settings),
        "seed": seed,
        "textworld": textworld.__version__,
        "walkthrough": walkthrough,
        "max_score": max_score,
        "objective": game.objective,
        "generation_seconds": round(time.perf_counter() - start, 3),
    }


def ensure_game(
    challenge: str,
    settings: Mapping[str, Any] | None = None,
    seed: int = 0,
    games_dir: str | os.PathLike[str] | None = None,
) -> GameFiles:
    """Return the cached game for (challenge, settings, seed), generating it on first use.

    Generation happens in a temporary folder beside the cache and becomes visible only through a
    single ``os.rename``, so an interrupted generation never leaves a game that later loads.
    """
    resolved = resolve_settings(challenge, settings)
    final = games_root(games_dir, default_games_dir) / game_key(challenge, resolved, seed)
    return build_game_folder(final, _read_game, lambda folder: _generate_game(challenge, resolved, seed, folder))


class TextWorldEnv(TextEnv):
    """One generated TextWorld game behind the Gymnasium API.

    ``reset(seed=...)`` seeds ``self.np_random`` only: the game itself is fixed by ``game_seed``
    (a TextWorld game is deterministic), so every episode starts from the same state.

    ``info`` holds ``state_text`` (φ(s)), ``admissible_actions`` (sorted), ``won``, ``lost``,
    ``objective``, ``score`` (cumulative) and ``max_score``. ``walkthrough`` is a command list that
    was verified to win when the game was generated; ``oracle_action()`` is the quest solver's next
    command from the current state (reactive, see the module docstring).
    """

    display_name = "TextWorld"
    oracle_kind = "reactive"

    def __init__(
        self,
        challenge: str = "tw-simple",
        game_seed: int = 0,
        settings: dict[str, Any] | None = None,
        max_episode_steps: int = 50,
        games_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        game_seed = check_game_seed(game_seed)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        # Jericho truncates input beyond ~198 bytes, so longer samples would not be what is played;
        # a backslash would reach the interpreter's meta commands (see _parse_action).
        super().__init__(action_max_length=190, action_charset=PRINTABLE.replace("\\", ""))
        import textworld

        self.challenge = challenge
        self.game_seed = game_seed
        self.max_episode_steps = max_episode_steps
        self._files = ensure_game(challenge, settings, game_seed, games_dir)
        self.settings: dict[str, Any] = dict(self._files.meta["settings"])
        self.game_path: Path = self._files.game_path
        self.walkthrough: tuple[str, ...] = self._files.walkthrough
        self.max_score: int = self._files.max_score
        #: What was recorded when the game was generated (settings, seed, generation time, ...).
        self.game_meta: Mapping[str, Any] = self._files.meta

        # Only what the info dict needs: every requested info costs interpreter calls per step.
        # facts come from TextWorld's own state tracker (no interpreter call; measured free).
        infos = textworld.EnvInfos(
            facts=True,
            description=True,
            inventory=True,
            admissible_commands=True,
            won=True,
            lost=True,
            objective=True,
            score=True,
            max_score=True,
        )
        self._game: Any = _start(self.game_path, infos)
        self._state: Any = None
        self._score = 0
        # Commands that reached the interpreter this episode, and the oracle's second interpreter.
        self._history: list[str] = []
        game_path = self.game_path
        self._shadow = ShadowPlanner(
            lambda: _start(game_path, textworld.EnvInfos(policy_commands=True, won=True, lost=True)),
            lambda state: state["policy_commands"],
        )

    def _info(self, state: Any) -> dict[str, Any]:
        won, lost = bool(state["won"]), bool(state["lost"])
        return {
            "state_text": describe_state(
                state["description"],
                state["inventory"],
                locked_in_view(state["facts"], state["description"]),
                "won" if won else "lost" if lost else None,
            ),
            "admissible_actions": sorted(state["admissible_commands"] or []),
            "won": won,
            "lost": lost,
            "objective": state["objective"],
            "score": int(state["score"]),
            "max_score": int(state["max_score"]),
        }

    def _reset(self) -> tuple[str, dict[str, Any]]:
        """Start from the game's initial state; return (feedback, info)."""
        state = self._game.reset()
        self._state = state
        self._history = []
        self._score = int(state["score"])
        return state.feedback, self._info(state)

    def _parse_action(self, action: str) -> str:
        """The command as a player would type it, on one line.

        The interpreter reads a newline as the end of a command (the rest becomes further commands
        whose output the wrapper never reads, desynchronising description and inventory) and treats
        a backslash as an escape to its own meta commands; both become spaces. An action with
        nothing left is refused before anything else is checked.
        """
        command = clean_command(action, drop="\\")
        if not command:
            raise ConfigError(f"empty TextWorld action {action!r}; send a command such as 'look' or 'go north'")
        return command

    def _step(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Send one command; reward is this step's score change, not the running total."""
        if command.split()[0].lower() in _META_COMMANDS:
            state = self._state
            feedback = (
                f"The interpreter command {command!r} is disabled in this environment "
                "(it would leave the game or write files)."
            )
            done = False
        else:
            state, _, done = self._game.step(command)
            self._history.append(command)
            feedback = state.feedback
        info = self._info(state)
        reward = float(info["score"] - self._score)
        self._score = info["score"]
        self._state = state
        terminated = bool(done or info["won"] or info["lost"])
        return feedback, reward, terminated, info

    def _oracle_action(self) -> str:
        """The first command of the quest solver's plan from the current state."""
        plan = self._shadow.plan(self._history)
        if not plan:
            raise ConfigError(
                f"TextWorld's quest solver finds no way to win {self.challenge} game_seed={self.game_seed} "
                f"from this state (after {len(self._history)} commands)"
            )
        return plan[0]

    def _release(self) -> None:
        """Stop the game interpreter (and the oracle's)."""
        self._shadow.close()
        self._game.close()
        self._game = None
