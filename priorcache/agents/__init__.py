"""Agents that act by the posterior π(a|s) ∝ p(a|s)·exp(Q(s,a)/α) (SPEC §6)."""
