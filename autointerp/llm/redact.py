"""Secrets out of what is written: a URL's user and password, and query values that look like keys.
Standard library only, so that the provider registry, the config checks and the CLI can use it."""

from __future__ import annotations

import re
from typing import Any

URL_AUTHORITY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s]*)")
SECRET_QUERY = re.compile(
    r"(?i)([?&][a-z0-9_.-]*(?:key|token|secret|passw(?:or)?d|pwd|sig|signature|auth)[a-z0-9_.-]*=)[^&#\s]*"
)


def redact_urls(text: str) -> str:
    """The text with every URL's user and password replaced by '***' (http://user:pw@host/v1 →
    http://***@host/v1), and the values of query parameters that look like secrets (?api_key=…)
    too: what may be written to a file, a log or the terminal."""

    def authority(m: re.Match) -> str:
        scheme, netloc = m.groups()
        return f"{scheme}***@{netloc.rpartition('@')[2]}" if "@" in netloc else m.group(0)

    return SECRET_QUERY.sub(r"\1***", URL_AUTHORITY.sub(authority, text))


def redacted(value: Any) -> Any:
    """A value (a config as asdict gives it: dicts, lists, tuples, strings) with redact_urls applied
    to every string in it, for storing or printing."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value
