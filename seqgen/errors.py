"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class SeqgenError(Exception):
    """Base class of every error caused by input (data, config, checkpoint), not by a bug."""


class ConfigError(SeqgenError):
    """An invalid or unknown configuration value."""


class DataError(SeqgenError):
    """Missing, empty, undecodable or too-small training data."""


class CheckpointError(SeqgenError):
    """A checkpoint that is missing, corrupt, or made for another task."""


class TrainingDiverged(SeqgenError):
    """The loss or the gradients became NaN or infinite."""
