"""Exceptions that stage scripts turn into a one-line error and a non-zero exit."""


class GradcleanError(Exception):
    """Base class: a problem with the user's input or params, with a message that names file/row/key."""


class ConfigError(GradcleanError):
    """A params key is unknown, missing, of the wrong type or out of range."""


class DataError(GradcleanError):
    """An input file, image or label is missing, corrupt or inconsistent."""


class ValidationFailed(GradcleanError):
    """A Great Expectations suite or a schema check failed on a table about to be written."""
