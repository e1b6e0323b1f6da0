"""User-facing error base. Imports nothing heavy so the CLI can catch it cheaply."""


class UserError(ValueError):
    """Bad input from the user (a name, a value, a file). The CLI prints the message on one line
    and exits with code 2, without a traceback. Messages name the file or value and what was expected."""
