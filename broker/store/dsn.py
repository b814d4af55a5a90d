"""The `store.url` setting: which store a broker runs on, and how it is shown.

Empty: the embedded LMDB ledger in the data directory. `postgresql://…` (or
`postgres://…`): PostgreSQL (pg_store.py). A DSN may carry a password; whatever shows
a DSN to people (`config show`, logs, error messages) shows it through `masked`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
MASK = "***"
# user:password@ in the network location (the password may hold anything but '@').
_USERINFO = re.compile(r"^(?P<user>[^:@]*):(?P<password>.*)@(?P<host>[^@]*)$")


class StoreOpenError(RuntimeError):
    """The store of `store.url` cannot be used at start (unreachable, not initialised,
    another layout, support not installed): one line for people, the password masked."""


def is_postgres(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES and "://" in url


def masked(url: str) -> str:
    """The DSN with its password (in the user info or a `password` parameter) as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    found = _USERINFO.match(netloc)
    if found and found["password"]:
        netloc = f"{found['user']}:{MASK}@{found['host']}"
    query = parts.query
    if query:
        params = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in params):
            query = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in params],
                              safe="/*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check(url: str) -> str | None:
    """What is wrong with a `store.url` value (settings check), or None."""
    if not url:
        return None
    if not is_postgres(url):
        return "must be empty (LMDB in the data directory) or a postgresql:// URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        return f"is not a valid URL ({error})"
    if not parts.path.strip("/"):
        return "names no database (postgresql://user@host:port/DATABASE)"
    return None
