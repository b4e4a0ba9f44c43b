"""priorcache: reinforcement learning with LLM action priors served through an adaptive semantic cache.

Data flows envs/ (environments, state describers φ(s)) → prior/ (LLM backends, action priors)
→ cache/ (encoder, index, prior cache, KL audit) → posterior.py → agents/ → experiments/ → cli.py.
"""

import os

# Before torch loads: OpenMP's default busy-wait makes small torch ops 10–30× slower whenever
# another process holds one of a few cores (measured here: MiniLM 18 ms → 524 ms a sentence).
# A default only: a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
