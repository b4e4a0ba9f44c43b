"""SAC-Prior's networks (:mod:`priorcache.agents.sac_prior`): the tanh-Gaussian actor π(a|s,z) with the skill
a one-hot input, and the twin critics Q(s,a)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """a = tanh(u), u = mean + std·noise (reparameterised), and log π(a) = log N(u) − Σ log(1 − tanh²u),
    the Jacobian term in the stable form 2·(log 2 − u − softplus(−2u))."""
    u = mean + log_std.exp() * noise
    log_n = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.tanh(u), log_n - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


#: A residual actor's base is atanh of the prior mean shrunk by this much: μ_z is clipped to ±1, atanh(±1) = ±∞.
BASE_SHRINK = 0.97
#: What a residual actor adds its MLP to, saved with its weights: a save whose residual was another (the
#: mean alone, before the std joined) would load into the wrong function without a word.
RESIDUAL_KIND = "mean-and-log-std"


class Actor(nn.Module):
    """π(a|s,z): a tanh-Gaussian whose mean and log-std come from an MLP on [s, one-hot(z)].

    With ``base`` (a function (obs, skills) → the prior's mean action μ_z(s) in [−1, 1]^d and std σ_z)
    the actor is a residual on it: the pre-tanh mean is atanh(0.97·μ_z(s)) and the pre-tanh log-std log σ_z,
    each plus the MLP's output, which starts at zero, so the untrained actor is near the prior at every
    state: exactly so at the box's centre; where μ_z nears ±1 tanh narrows it (KL ≤ 2.5 nats a dimension
    for σ_z in 0.05–0.5; carrying σ_z through tanh's slope instead overshoots there, to 7–16 nats)."""

    def __init__(
        self,
        obs_dim: int,
        n_skills: int,
        act_dim: int,
        hidden: int,
        log_std_range: tuple[float, float],
        base: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        super().__init__()
        self.n_skills, self.log_std_range, self.base = n_skills, log_std_range, base
        self.net = mlp(obs_dim + n_skills, hidden, 2 * act_dim)
        if base is not None:
            with torch.no_grad():
                self.net[-1].weight.zero_()
                self.net[-1].bias.zero_()

    def forward(self, obs: torch.Tensor, skill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([obs, F.one_hot(skill, self.n_skills).to(obs.dtype)], dim=-1))
        mean, log_std = out.chunk(2, dim=-1)
        if self.base is not None:
            prior_mean, prior_std = self.base(obs, skill)
            mean = mean + torch.atanh(BASE_SHRINK * prior_mean)
            log_std = log_std + torch.log(prior_std)
        return mean, torch.clamp(log_std, *self.log_std_range)

    def sample(self, obs: torch.Tensor, skill: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(a, log π(a|s,z)) for standard-normal ``noise`` of shape (B, d)."""
        return squashed_gaussian(*self(obs, skill), noise)


class TwinQ(nn.Module):
    """Two independent Q(s,a) heads; ``forward`` returns both (B,) and (B,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, hidden, 1), mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
