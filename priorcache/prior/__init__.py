"""LLM backends and the action priors they give (F3, F9; docs/design.md §2)."""
