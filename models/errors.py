"""The one exception family the CLI prints as a single line instead of a traceback."""


class NexusError(Exception):
    """A problem the user can fix (bad input file, bad bundle, unreachable service...)."""


class DataError(NexusError):
    """A data file is missing, malformed, or holds values the model does not know."""
