"""Errors that mean "the user's input is wrong", as opposed to bugs.

The CLI dispatcher prints a UserError as one line and exits 2; anything else keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, a malformed record, an unknown key. The message says what and where."""
