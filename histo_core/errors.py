"""User-facing errors.

Every error a user can cause (bad file, bad option, missing data) is raised as a `HistoError` whose
message names the input and says what to do. The CLI prints it as one line and exits 2; pages show it
with `st.error`. Anything else escaping is a bug.
"""


class HistoError(Exception):
    """An error caused by user input, with a message fit to show as is."""


class DatasetError(HistoError):
    """A dataset spec or file that cannot be used."""


class ConfigError(HistoError):
    """An invalid training/evaluation option."""


class ModelFileError(HistoError):
    """A checkpoint or exported model that cannot be loaded."""


class ImageError(HistoError):
    """An uploaded image that cannot be decoded."""


class DownloadError(HistoError):
    """A download that failed (offline, checksum mismatch)."""
