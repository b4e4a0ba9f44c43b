"""Validation of candidates and backend scores before they become a prior (F3)."""

import numpy as np
import pytest

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import check_candidates, check_scores


def test_empty_and_duplicate_candidates_rejected():
    with pytest.raises(ConfigError, match="empty"):
        check_candidates([])
    with pytest.raises(ConfigError, match="duplicate.*go north"):
        check_candidates(["go north", "look", "go north"])
    assert check_candidates(("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_name_the_action(bad):
    with pytest.raises(BackendError, match="non-finite.*take key"):
        check_scores(np.array([-1.0, bad]), ["look", "take key"], "backend 'x'")


def test_wrong_number_of_scores():
    with pytest.raises(BackendError, match="3 candidate"):
        check_scores(np.array([-1.0, -2.0]), ["a", "b", "c"], "backend 'x'")
