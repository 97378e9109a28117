"""The one exception type users see: a message that names the input, what is wrong, and the fix."""
from __future__ import annotations

import difflib
import errno
import re
from typing import Iterable, Iterator

__all__ = ["TlkitError", "did_you_mean", "close_matches", "describe_error", "environment_fault", "mask_secrets",
           "url_password"]

# user:PASSWORD@ in a URL, and password=/token=/secret= parameters, as SQLAlchemy, psycopg and fsspec URLs carry
# them. The password runs to the '@' after which a host follows (no further '@' before a '/', a space, a quote or the
# end), so an unescaped '@', '/' or space in it stays hidden too (SQLAlchemy accepts them unescaped).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]*:).+?@(?=[^@\s'\"/]*(?:[/\s'\"]|$))")
_SECRET_PARAMETER = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd|secret|token|secret_access_key)=)[^&;\s'\"]+")


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password in a URL (``postgresql://user:***@host/db``), every ``password=...`` parameter
    and each of ``secrets`` (a password parsed from the URL itself, however it is written) replaced by ``***``: a
    storage or store URL appears in messages and logs, its password must not."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # a shorter one would garble the message; the URL pattern still hides it
            text = text.replace(secret, "***")
    return _SECRET_PARAMETER.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***@", text))


def url_password(url: str) -> str | None:
    """The password in ``url`` as a URL parser reads it (SQLAlchemy's for a database URL, else the standard
    library's), percent-decoded, or None: for ``mask_secrets(text, secrets=...)``. Its percent-encoded form in the URL
    itself is the URL pattern's to hide."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password or password
    except Exception:  # noqa: BLE001 - not a database URL, or SQLAlchemy cannot parse it: the regex still applies
        pass
    return unquote(password) if password else None


class TlkitError(Exception):
    """A problem with the user's input or environment, reported as one paragraph without a traceback.

    The CLI prints ``str(err)`` and exits non-zero; library callers can catch it like any exception. The message
    never carries a password: a URL in it is masked here, once, for every message.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(mask_secrets(str(message)), *args)


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
    first = mask_secrets(lines[0])[:limit] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_RERUN = ("run the same command again: finished trials are kept and the interrupted trial resumes from its last "
          "checkpoint.")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]


def environment_fault(err: BaseException) -> TlkitError | None:
    """The one-paragraph message for a fault of the machine rather than of the input or of tlkit (a full disk, a
    folder that cannot be written, a study database that is locked or unreachable), or None for any other error.

    Such a fault stops the sweep; nothing is lost (checkpoints and the storage are written atomically), so the
    message ends with the remedy and "run the same command again".
    """
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, OSError) and e.errno in _FULL | _DENIED | {errno.EIO}:
            return _os_fault(e)
    database = [e for e in chain if type(e).__name__ in ("OperationalError", "InterfaceError", "DatabaseError",
                                                         "StorageInternalError")]
    if not database:
        return None
    text = " ".join(str(e) for e in database).lower()
    said = describe_error(database[-1])
    if "malformed" in text or "not a database" in text:  # not a passing fault: rerunning alone will not help
        return TlkitError(f"The study storage is damaged ({said}). HINT: restore study.db from a backup, or move it "
                          f"aside (sqlite3's .recover may save its trials) and run again to start the study anew.")
    if "locked" in text:
        what, fix = "is locked by another process", ("let the process holding it finish (or stop it); many workers "
                                                     "need PostgreSQL, not SQLite")
    elif "full" in text:
        what, fix = "is on a full disk", "free space on that disk"
    elif "readonly" in text or "read-only" in text or "unable to open" in text:
        what, fix = "cannot be written", "make the study.db file and its folder writable"
    else:
        what, fix = "could not be reached or written", "check that the database server is up and reachable"
    return TlkitError(f"The study storage {what} ({said}). HINT: {fix}, then {_RERUN}")


def _os_fault(e: OSError) -> TlkitError:
    if e.errno in _FULL:
        return TlkitError(f"The disk is full ({describe_error(e)}). HINT: free space on it (or pass --out on "
                          f"another disk, and set TLKIT_CACHE if the cache is there), then {_RERUN}")
    if e.errno in _DENIED:
        return TlkitError(f"Permission denied ({describe_error(e)}). HINT: make the folder writable (or pass "
                          f"--out with a folder you can write), then {_RERUN}")
    return TlkitError(f"An input/output error ({describe_error(e)}): the disk or network filesystem failed. "
                      f"HINT: check the device, then {_RERUN}")
