"""Exceptions raised for bad input; each message names what was wrong."""


class PriorCacheError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PriorCacheError, ValueError):
    """An invalid parameter or configuration key (δ outside [-1, 1], unknown agent, …)."""


class BackendError(PriorCacheError, RuntimeError):
    """An LLM backend failed or returned unusable output (NaN/inf scores, not a causal LM, …)."""


class CacheFormatError(PriorCacheError, ValueError):
    """A saved cache directory is damaged, foreign or of another format version."""


class UnknownEnvironmentError(PriorCacheError, ValueError):
    """An unknown environment name or invalid environment settings."""
