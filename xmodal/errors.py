"""Errors a user can act on. The CLI prints them without a traceback (unless --debug)."""


class XmodalError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataError(XmodalError):
    """Input data is missing, empty, corrupt or inconsistent."""


class ConfigError(XmodalError):
    """An unknown option value (encoder name, data set, metric...)."""
