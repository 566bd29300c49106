"""The one base class of the mistakes a person can fix: a wrong option, task file, model name or prompt file.

Every command line catches it and prints ``error: <message>`` and exits with 2, so each subclass's message
says what is wrong and how to fix it, in one line. Anything else that escapes is a bug and shows its traceback.
"""


class UserError(Exception):
    """An ordinary mistake; its message is shown to the user as it is."""


class OptionError(UserError, ValueError):
    """An option with a value it cannot take (an engine, a dtype, a list of methods)."""
