"""Errors a user can act on: the CLI prints their message as one line (no traceback unless
`taid --debug`) and exits with their `exit_code`; a Prefect flow run fails with the same line.

Raise them where the cause is known (a missing source, an unwritable destination, a corrupt
manifest file, a refused target), with a message that says what is wrong and what to do."""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the input or the environment, not a bug: one line, exit 2."""

    exit_code = 2


class StorageConfigError(UserError):
    """Storage is not usable as configured (credentials, endpoint, bucket, a missing source, an
    unwritable destination); the message is one line saying what to set."""


class CorruptFileError(UserError):
    """A manifest or index file that is not valid Parquet/JSON (the message names the file)."""


class ManifestWriteError(UserError):
    """The manifest could not be written (disk full, read-only, refused): the rows not written are
    lost for this run; the next run redoes exactly the objects without a row. Exit 1: the run
    did work, unlike the configuration errors (exit 2) found before any."""

    exit_code = 1


class DestinationFullError(UserError):
    """The destination stopped taking writes (disk full, quota, read-only) during a run: the run
    stopped starting new work; what was written has its rows. Exit 1: work was done."""

    exit_code = 1


# errno values where the storage itself refuses writes: no retry helps, say so in one line
STORAGE_FULL_OR_READ_ONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_REFUSAL_TEXTS = tuple(os.strerror(e) for e in STORAGE_FULL_OR_READ_ONLY)


def storage_refuses(message: str | None) -> bool:
    """Does a row's error message say the storage refuses every write (full, quota, read-only)?
    Rows carry the OSError's text, so its strerror is what there is to go by."""
    return bool(message) and any(t in message for t in _REFUSAL_TEXTS)


def os_error_line(exc: BaseException) -> str | None:
    """One line for an OSError whose cause a user can fix (disk full, read-only, denied), else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in STORAGE_FULL_OR_READ_ONLY or isinstance(exc, PermissionError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    return None
