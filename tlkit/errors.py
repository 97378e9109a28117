"""The one exception type users see: a message that names the input, what is wrong, and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["TlkitError", "did_you_mean"]


class TlkitError(Exception):
    """A problem with the user's input or environment, reported as one paragraph without a traceback.

    The CLI prints ``str(err)`` and exits non-zero; library callers can catch it like any exception.
    """


def did_you_mean(name: str, choices: Iterable[str], what: str, list_available: bool = True) -> str:
    """``Unknown strategy 'lastn'. Did you mean 'last_n'? Available: a, b, c.``"""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = f" Available: {', '.join(choices)}." if list_available else ""
    return f"Unknown {what} {name!r}.{hint}{shown}"
