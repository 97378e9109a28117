"""The one exception type users see: a message that names the input, what is wrong, and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["TlkitError", "did_you_mean", "close_matches", "describe_error"]


class TlkitError(Exception):
    """A problem with the user's input or environment, reported as one paragraph without a traceback.

    The CLI prints ``str(err)`` and exits non-zero; library callers can catch it like any exception.
    """


def did_you_mean(name: str, choices: Iterable[str], what: str, list_available: bool = True) -> str:
    """``Unknown strategy 'lastn'. Did you mean 'last_n'? Available: a, b, c.``"""
    choices = sorted(set(choices))
    shown = f" Available: {', '.join(choices)}." if list_available else ""
    return f"Unknown {what} {name!r}.{close_matches(name, choices)}{shown}"


def close_matches(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'last_n'?`` (with its leading space) for the close matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), sorted(set(map(str, choices))), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def describe_error(err: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message`` for any exception, even one whose message is empty.

    Error paths use this instead of ``str(err).splitlines()[0]``, which itself raises on an empty message: a
    report about a damaged file must never become a second crash.
    """
    try:
        lines = str(err).strip().splitlines()
    except Exception:  # noqa: BLE001 - a __str__ that raises is still an error we can name
        lines = []
    first = lines[0][:limit] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
