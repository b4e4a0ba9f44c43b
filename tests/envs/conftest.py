"""Fixtures shared by the environment tests: one folder of generated games per engine and session.

TextWorld and ALFWorld games are generated into pytest temp folders (never the user's cache), once
per session, whichever test asks first; the contract tests and each family's own tests share them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def textworld_games_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tw_games")


@pytest.fixture(scope="session")
def alfworld_games_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alfworld_games")
