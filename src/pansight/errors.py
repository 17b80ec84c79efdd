"""Errors a user can act on: each names the file or key at fault and the fix.

The command line prints these as one line (no traceback) and exits with status 2.
"""


class PansightError(Exception):
    """Base class of every error pansight raises on purpose."""


class DataError(PansightError):
    """A data file or data set is unusable: corrupt image, malformed annotation, bad label."""


class ConfigError(PansightError):
    """A configuration key or value is unknown or invalid."""


class CheckpointError(PansightError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class TrainingError(PansightError):
    """Training cannot go on (for example the loss became NaN or infinite)."""
