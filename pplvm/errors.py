"""The errors pplvm raises at its boundary.

Every check on user input (cards, data, arguments) raises a subclass of :class:`PplvmError`
with one message that names the field or argument and what was expected, so that the CLI can
print it without a traceback.
"""

from __future__ import annotations


class PplvmError(Exception):
    """Base of every error pplvm raises on purpose."""


class CardError(PplvmError, ValueError):
    """A model card (or the config built from Python) is invalid."""


class DataError(PplvmError, ValueError):
    """Data handed to pplvm cannot be used as given."""


class IncompatibleError(PplvmError, ValueError):
    """A model / guide / objective combination that cannot work."""


class ArgumentError(PplvmError, ValueError):
    """An argument of a pplvm function or command is out of range (e.g. a seed, a count)."""


class TrainingError(PplvmError, RuntimeError):
    """Training stopped and could not go on (e.g. a non-finite loss)."""


class RunDirError(PplvmError, FileNotFoundError):
    """A run directory is missing, does not hold what pplvm wrote there, is in use, or would be
    overwritten without being asked to."""


class StorageError(PplvmError, OSError):
    """A file could not be written: a read-only or full disk, a path under a regular file."""
