"""The one exception type that means "the user's input is wrong": the CLI prints it and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, a folder, a params key) with a message saying how to fix it."""

    exit_code = 2
