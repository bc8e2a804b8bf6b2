"""The one exception type that carries a message meant for the user.

Loaders and analyses turn every bad input (unreadable file, NaN, wrong shape, unknown model,
offline download) into an :class:`InputError` whose text says what is wrong and what to do.
Views show that text in the page; anything else is a bug and is shown with its type.
"""


class InputError(ValueError):
    """Bad input from the user: the message is complete and safe to show as is."""
