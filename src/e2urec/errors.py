"""The one exception type that the CLI turns into a clear error line and exit code 2."""


class E2URecError(Exception):
    """A problem with the user's input or environment, explained in one line."""
