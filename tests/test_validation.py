"""check_seeds: the one definition of a valid list of run seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils import seeding

from priorcache.agents.base import episode_seed
from priorcache.errors import ConfigError
from priorcache.validation import MAX_SEED, MAX_SEEDS, check_seeds


def test_valid_seeds_come_back_as_plain_ints():
    seeds = check_seeds([3, np.int64(1), 0])
    assert seeds == [3, 1, 0]  # the order is the user's: it is the order the seeds run in
    assert all(type(s) is int for s in seeds)  # numpy ints would not survive json.dumps


def test_duplicates_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"seed\(s\) \[0, 2\] given more than once"):
        check_seeds([0, 2, 1, 0, 2])


@pytest.mark.parametrize(
    "seeds, match",
    [
        ([], "at least one seed"),
        (list(range(MAX_SEEDS + 1)), f"at most {MAX_SEEDS} seeds"),
        ([-1], r"in \[0, 2147483647\], got \[-1\]"),
        ([MAX_SEED + 1], "2147483648"),
        ([2**70], "1180591620717411303424"),
        ([True], "True"),  # a bool is a typo, not seed 1
        ([1.0], "1.0"),
        (["0"], "'0'"),
        ("0,1", "must be a list of integers"),
        (7, "must be a list of integers"),
    ],
)
def test_bad_seeds_are_refused(seeds, match):
    with pytest.raises(ConfigError, match=match):
        check_seeds(seeds)


def test_the_largest_seed_is_valid_for_every_consumer():
    """MAX_SEED reaches torch, numpy and gymnasium as itself and, through episode_seed, as an
    env.reset seed of the last episode a seed can have: none of them may refuse it."""
    (seed,) = check_seeds([MAX_SEED])
    with torch.random.fork_rng(devices=[]):  # leaves the global RNG of other tests alone
        torch.manual_seed(seed)
        with pytest.raises((ValueError, RuntimeError)):  # what check_seeds guards against
            torch.manual_seed(2**70)
    np.random.default_rng(seed)
    np.random.default_rng([seed, 1])
    reset_seed = episode_seed(seed, 100_002)
    assert reset_seed < 2**63  # still an int64
    seeding.np_random(reset_seed)
