"""Errors that lmx reports as one clear message instead of a traceback."""


class LmxError(Exception):
    """Base class: the message is written for the user and printed as-is."""


class ConfigError(LmxError):
    """The composed config is invalid (checked before any work starts)."""


class DataError(LmxError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(LmxError):
    """A checkpoint cannot be written or loaded."""
