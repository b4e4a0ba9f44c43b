"""Encoder, nearest-neighbour index, the prior cache and its KL audit (SPEC §4, F5–F7)."""
