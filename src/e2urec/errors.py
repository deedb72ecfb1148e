"""The one exception type that the CLI turns into a clear error line and exit code 2."""


class E2URecError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: object) -> str:
    """An exception's message with its line breaks and runs of spaces collapsed."""
    return " ".join(str(exc).split())
