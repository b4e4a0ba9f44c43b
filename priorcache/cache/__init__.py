"""The prior cache (docs/design.md §3): config, controllers (modes), eviction, index, encoder, state and store."""
