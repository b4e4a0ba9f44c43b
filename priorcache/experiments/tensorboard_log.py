"""TensorBoard scalars of a run (``--tensorboard``): one event folder per seed under ``tensorboard/``.

Per training episode, against the seed's environment steps: return, success, LLM queries so far,
cache hit rate of the episode, F2's α and the cache's δ (and K, r) (text runs; control runs have the
first four). Per evaluation: held-out success and return, against environment steps and against LLM
queries spent by then.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from priorcache.experiments.evaluation import EvalEpisode
    from priorcache.experiments.metrics import EpisodeRecord


class ScalarLog:
    """Writes TensorBoard scalars; with ``folder`` None it writes nothing (and imports nothing)."""

    def __init__(self, folder: Path | None, resumed: tuple[int, int] | None = None) -> None:
        """``resumed``: (seed, first step) of a resumed run: that seed's events from that step on,
        written by the run that was stopped after its checkpoint, are purged (TensorBoard's
        ``purge_step``), since the resumed run writes them again (see :func:`purge_from`)."""
        self.folder = folder
        self.resumed = resumed
        self._writers: dict[int, Any] = {}

    def _writer(self, seed: int) -> Any:
        if seed not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.resumed[1] if self.resumed is not None and self.resumed[0] == seed else None
            self._writers[seed] = SummaryWriter(log_dir=str(Path(self.folder) / f"seed{seed}"), purge_step=purge)
        return self._writers[seed]

    def episode(self, seed: int, record: EpisodeRecord, steps: int, queries: int) -> None:
        """One training episode; ``steps``/``queries``: the seed's environment steps and LLM queries so far."""
        if self.folder is None:
            return
        w = self._writer(seed)
        w.add_scalar("train/return", record.episode_return, steps)
        w.add_scalar("train/success", float(record.success), steps)
        w.add_scalar("train/llm_queries", queries, steps)
        if record.lookups:
            w.add_scalar("cache/hit_rate", record.hits / record.lookups, steps)
        alpha = getattr(record, "alpha", None)  # a control episode has neither α nor cache parameters
        if alpha is not None:
            w.add_scalar("posterior/alpha", alpha, steps)
        for name, value in (getattr(record, "cache_params", None) or {}).items():
            if isinstance(value, (int, float)):
                w.add_scalar(f"cache/{name}", value, steps)
        w.flush()

    def evaluation(self, seed: int, found: list[EvalEpisode]) -> None:
        """One evaluation (greedy episodes on every held-out game)."""
        if self.folder is None or not found:
            return
        self.held_out(
            seed,
            found[0].train_steps,
            found[0].train_llm_queries,
            sum(e.success for e in found) / len(found),
            sum(e.episode_return for e in found) / len(found),
        )

    def held_out(self, seed: int, steps: int, queries: int, success: float, mean_return: float) -> None:
        """One evaluation's means, at the seed's training environment steps and LLM queries."""
        if self.folder is None:
            return
        w = self._writer(seed)
        w.add_scalar("held_out/success", success, steps)
        w.add_scalar("held_out/return", mean_return, steps)
        w.add_scalar("held_out/success_vs_llm_queries", success, queries)
        w.add_scalar("held_out/return_vs_llm_queries", mean_return, queries)
        w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def purge_from(checkpoint_steps: int, within_seed: bool) -> int:
    """The first step a resumed seed writes again: past the checkpoint's steps (its last episode and
    evaluation, at exactly those steps, are kept), or 0 when the seed starts again from scratch."""
    return checkpoint_steps + 1 if within_seed else 0
