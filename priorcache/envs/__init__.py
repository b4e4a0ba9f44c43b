"""Environments (Gymnasium-style) and their state describers φ(s) (docs/design.md §5)."""
