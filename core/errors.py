"""The one user-facing error type: the CLI prints its message as a single line, no traceback."""


class SegkdError(Exception):
    """A problem with the user's input (file, argument, data) that they can fix.

    The message must name the culprit (the file or the option) and say what is wrong.
    """
