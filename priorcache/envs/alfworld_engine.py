"""ALFWorld's text engine, loaded and driven quietly: the plumbing the ALFWorld environment and games share.

``_start`` loads one ALFWorld game file in TextWorld's PDDL environment with ALFWorld's wrappers
(``AlfredDemangler``, ``AlfredInfos`` and, on request, the planner expert ``AlfredExpert``), ``_stop``
frees it, and ``_quiet`` silences the engine and the planner's C++ output while they run.
:func:`expert_plan` asks ALFWorld's planner expert for a plan from a game's start, and
:func:`plays_to_win` replays commands in the engine to check that they win: together they certify a
game (:mod:`priorcache.envs.alfworld_games`); :class:`priorcache.envs.alfworld_env.ALFWorldEnv` plays
games through the same loader.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the engine: Python prints and the planner's C++ output go to /dev/null.

    fast-downward's PDDL translator also overwrites ``sys.argv``; it is restored.
    """
    argv = sys.argv
    sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:  # pragma: no cover - no file descriptor 1
        saved = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if saved is not None:
            try:
                ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fd 1 comes back
            except (OSError, AttributeError):  # pragma: no cover - no libc
                pass
            os.dup2(saved, 1)
            os.close(saved)
        sys.argv = argv


def _start(game_path: Path, infos: Any, expert: bool = False) -> Any:
    """Load one game in TextWorld's PDDL environment with ALFWorld's wrappers."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import (
        AlfredDemangler,
        AlfredExpert,
        AlfredInfos,
    )

    wrappers: list[Any] = [AlfredDemangler(), AlfredInfos]
    if expert:
        wrappers.append(AlfredExpert(expert_type="planner"))
    with _quiet():
        return textworld.start(str(game_path), infos, wrappers=wrappers)


def _stop(engine: Any) -> None:
    """Free the planner's memory in the engine's private copy of fast-downward's library.

    The library itself stays loaded: unloading it (``fast_downward.close_lib``) makes the
    interpreter crash at exit. Each engine so keeps about 1 MB until the process ends.
    """
    lib = getattr(engine.unwrapped, "downward_lib", None)
    engine.close()
    if lib is not None:
        lib.cleanup()


def _engine_infos() -> Any:
    import textworld

    return textworld.EnvInfos(admissible_commands=True, won=True, facts=True)


def expert_plan(game_path: Path) -> list[str]:
    """ALFWorld's planner expert's plan from the initial state ([] if none, or already won)."""
    import textworld

    engine = _start(game_path, textworld.EnvInfos(admissible_commands=True, won=True), expert=True)
    try:
        with _quiet():
            state = engine.reset()
        if state["won"]:
            return []
        return [str(c) for c in state["extra.expert_plan"] or []]
    finally:
        _stop(engine)


def plays_to_win(game_path: Path, commands: Iterable[str]) -> bool:
    """Play ``commands`` from the start; True iff each is admissible and the last one wins."""
    import textworld

    engine = _start(game_path, textworld.EnvInfos(admissible_commands=True, won=True))
    try:
        with _quiet():
            state = engine.reset()
        commands = list(commands)
        for command in commands:
            if state["won"] or command not in state["admissible_commands"]:
                return False
            state, _, _ = engine.step(command)
        return bool(commands) and bool(state["won"])
    finally:
        _stop(engine)
