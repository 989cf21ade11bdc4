"""Errors a user can cause (bad config, bad file, wrong path, mismatched checkpoint, malformed row).

The CLI turns every `UserError` into one line on stderr and exit status 2, never a traceback.
Messages name the file, key or line at fault.
"""


class UserError(Exception):
    """Something the user can fix; the message is shown as-is."""


class ConfigError(UserError, ValueError):
    """A bad configuration key or value; the message names the key."""


class CheckpointError(UserError):
    """A checkpoint that is missing, malformed or does not fit the model; the message names the file or tensor."""


class DataError(UserError, ValueError):
    """A malformed input file or row; the message names the file and line."""
