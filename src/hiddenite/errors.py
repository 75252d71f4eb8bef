"""The error types of hiddenite's user-facing surface.

:class:`UserError` is the base of every error caused by what a user asked for or handed over
(a bad config value, a broken file, missing data): the command line prints it as one line and
exits with code 2. Anything else that escapes is a bug in hiddenite and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DatasetError", "UserError"]


class UserError(Exception):
    """An error in the user's input; the message names the problem and the fix."""


class DatasetError(UserError):
    """A data set is missing, unreadable or corrupt; the message is one line naming the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""
