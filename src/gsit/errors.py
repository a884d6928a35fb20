"""Error types.  Every user-facing error is a ``ValueError`` subclass whose message names the file,
split, key, shape or value at fault; the CLI turns them into one line on stderr and exit code 2."""


class GsitError(ValueError):
    """Base class of gsit's user-facing errors."""


class DataError(GsitError):
    """A data file is unreadable, unsafe, or does not match the expected format."""


class ConfigError(GsitError):
    """A configuration file or override is invalid."""


class UnsafePickleError(DataError):
    """A pickle names a global that gsit refuses to load (no code from data files is ever run)."""


class UnsupportedInput(GsitError):
    """An attention backend cannot run the given inputs; the message lists every reason (no fallback)."""
