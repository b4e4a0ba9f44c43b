"""Run loop, metrics and reports (SPEC §8)."""
