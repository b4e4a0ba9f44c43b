"""Environments (Gymnasium-style) and their state describers φ(s) (SPEC §7)."""
