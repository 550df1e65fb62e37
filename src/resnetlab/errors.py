"""Errors that resnetlab raises for bad user input.

Each carries one sentence saying what was wrong and what to do; the CLI prints it
as a single line instead of a traceback.
"""


class ResnetlabError(Exception):
    """Base class for every error caused by the user's input rather than a bug."""


class ConfigError(ResnetlabError, ValueError):
    """An unknown model name, option, or an invalid combination of options."""


class CheckpointError(ResnetlabError):
    """A weights file or state dict that cannot be read or does not fit the model."""


class DataError(ResnetlabError):
    """A data folder, image file or dataset archive that cannot be used as given."""


class NotAnImage(DataError):
    """Bytes that no image decoder recognises: text, an archive, an unknown format."""


class ImageTooLarge(DataError):
    """An image with more pixels than allowed, checked before decoding (a decompression-bomb guard)."""
