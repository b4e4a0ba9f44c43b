"""Run loop, metrics and reports (docs/design.md §1)."""
