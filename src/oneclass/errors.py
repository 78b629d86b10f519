"""Errors a user can act on.

Everything raised as :class:`OneclassError` is shown by the CLI as one line, without a
traceback: it names the file, parameter or epoch that is wrong and what is wrong with it.
"""


class OneclassError(Exception):
    """A problem with the user's input, configuration or environment (not a bug)."""


class DataError(OneclassError, ValueError):
    """An image, mask or data specification that cannot be used."""


class NotAnImageError(DataError):
    """Bytes that do not decode as an image: an unknown, corrupt or truncated format (not a
    file that cannot be opened, nor an image refused for its size)."""


class ConfigError(OneclassError, ValueError):
    """An unknown method or parameter, or a parameter value out of range."""


class TrainingError(OneclassError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class ModelFileError(OneclassError):
    """A saved model that cannot be loaded (missing, tampered or from another version)."""
