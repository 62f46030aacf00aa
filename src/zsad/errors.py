"""Error text helpers shared by the library and the commands (no torch, no transformers)."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ZSADWarning(UserWarning):
    """A warning zsad itself gives about the user's data, model or settings (the commands show these;
    library warnings only with --verbose)."""
