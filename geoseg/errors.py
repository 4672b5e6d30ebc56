"""Error types. Every error a user can cause is a :class:`GeosegError`.

The CLI prints such errors as one line (no traceback) and exits non-zero. Each
subclass also derives from the matching builtin, so callers can catch
``ValueError`` / ``OSError`` as usual.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Root of all geoseg errors that are the user's to fix."""


class InputError(GeosegError, ValueError):
    """A bad argument, option or configuration value."""


class RasterError(GeosegError, ValueError):
    """A raster that cannot be used as given (wrong bands, mismatching grids...)."""


class StorageError(GeosegError, OSError):
    """A file or object that cannot be read or written (missing, denied...)."""


class ReadError(StorageError):
    """Pixels that cannot be read from a raster that opened (a corrupt or truncated file)."""


class CheckpointError(GeosegError, ValueError):
    """A model checkpoint that is missing, unsafe or malformed."""


class OutputExistsError(GeosegError, FileExistsError):
    """An output exists from a different run and ``--overwrite`` was not given."""


class ScenesFailedError(GeosegError, RuntimeError):
    """Scenes of a job failed (each listed with its error in the job summary); the others finished."""


def one_line(err: BaseException) -> str:
    """An error's first line, its whitespace folded: what a job summary and the CLI show."""
    return " ".join(str(err).split("\n")[0].split()) or type(err).__name__
