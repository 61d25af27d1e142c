"""Stored text as the views show it, shared by report, show and export: vocabulary entries made
readable, and run ids made safe as file names. Standard library only, so a view that needs
these loads no plotting or data-frame code for them."""

from __future__ import annotations

import re


def visible_token(token: str) -> str:
    """A vocabulary entry as read: byte-level BPE's space and newline marks shown as the characters."""
    return token.replace("Ġ", "␣").replace("▁", "␣").replace("Ċ", "⏎")


def file_stem(run_id: str) -> str:
    """A run id made safe as a file name (user-given ids may hold '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id)
