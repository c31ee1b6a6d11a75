"""User-facing errors.

Anything the user can fix (a bad path, a bad config key, a mask with the wrong classes) is raised
as :class:`UserError` with a message that names the problem *and* the fix. Scripts catch it and
print one line (no traceback) with a non-zero exit code; see :func:`ldm.cli.main_guard`.
"""


class UserError(Exception):
    """A problem with the user's input, config or files, with a message saying how to fix it."""


class ConfigError(UserError):
    """A config file that does not validate (unknown key, missing key, wrong type, bad target)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, of the wrong kind, or whose keys don't match."""


class DataError(UserError):
    """A data file or data tree that is missing, unreadable or malformed."""
