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


def open_text(path, encoding: str = "utf-8-sig", newline: str | None = None):
    """A user-given text file opened for reading; missing, a folder or unreadable is one DataError naming it.

    utf-8-sig (the default) also drops a byte-order mark (MRPC's files start with one). Decoding happens as
    the file is read: callers map UnicodeDecodeError with `not_utf8`."""
    from pathlib import Path

    path = Path(path)
    try:
        return open(path, encoding=encoding, newline=newline)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def not_utf8(path, e: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")


def read_text(path, encoding: str = "utf-8-sig") -> str:
    """A user-given text file's contents; a missing, unreadable or non-UTF-8 file is one DataError naming it."""
    with open_text(path, encoding) as fh:
        try:
            return fh.read()
        except UnicodeDecodeError as e:
            raise not_utf8(path, e) from None
