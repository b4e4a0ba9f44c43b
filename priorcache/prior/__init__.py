"""LLM backends and the action priors they give (SPEC §3 F3, F9; §5)."""
