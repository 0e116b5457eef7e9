"""The errors a user can fix, and the one way a refused config value is phrased.

`UserError` and its kinds (`ConfigError`, `MissingInputError`) are what the command line prints as
`error: <message>` with no traceback; `UsageError` is a flag, config file or config key on the
command line that cannot work; `require` raises the ConfigError that names the key, the bad value
and what is allowed. Nothing here imports torch, so the command line can use it before any work.
"""


class UserError(Exception):
    """Something the user can fix: a config value, a missing file, a workdir made with another config.
    The command line prints the message alone (`error: <message>`, no traceback) and exits with
    `exit_code`. `make_with`, where set, names the --mode that makes the missing input: the command
    line appends that command, ready to paste."""

    exit_code = 2
    make_with = None


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run reads is not there (data, checkpoint, feature network, statistics)."""

    def __init__(self, message: str, make_with=None):
        super().__init__(message)
        self.make_with = make_with


class UsageError(Exception):
    """A flag, a config file or a config key on the command line that cannot work."""


def require(ok: bool, key: str, value, allowed: str) -> None:
    """ConfigError `config.<key> = <value> is not allowed: <allowed>` unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{key} = {value!r} is not allowed: {allowed}")


class WriteError(UserError, OSError):
    """Writing a file failed (a full disk, a read-only folder, a quota): what was being written, where,
    and the system's words for why, in one line. Its exit status is neither a crash's (1) nor a
    usage error's (2): sysexits' EX_IOERR."""

    exit_code = 74


class BadFileError(UserError, ValueError):
    """A file the run reads (a config, a checkpoint, weights, data, an observation, samples) is not
    what it should be: the message names the file and what is wrong with it."""
