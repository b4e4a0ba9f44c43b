"""priorcache: reinforcement learning with LLM action priors served through an adaptive semantic cache.

Data flows envs/ (environments, state describers φ(s)) → prior/ (LLM backends, action priors)
→ cache/ (encoder, index, prior cache, KL audit) → posterior.py → agents/ → experiments/ → cli.py.
"""

__version__ = "0.1.0"
