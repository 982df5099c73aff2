"""The one exception type the commands turn into a one-line message and exit code 2."""


class UserError(ValueError):
    """A problem with the command line, the data, a file or a checkpoint (not a bug)."""
