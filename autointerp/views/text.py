"""Stored text as the views show it, shared by report, show and export: vocabulary entries made
readable, and run ids made safe as file names. Standard library only, so a view that needs
these loads no plotting or data-frame code for them."""

from __future__ import annotations

import re


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE (GPT-2 and its descendants) writes each byte of a token as one printable
    character: the printable Latin-1 bytes as themselves, the other 68 bytes as U+0100 onwards in
    byte order. Character → byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


BYTE_OF = _byte_level_alphabet()


def visible_token(token: str) -> str:
    """A vocabulary entry as read: a byte-level BPE entry decoded from its bytes (a piece of a
    multi-byte character shown as its bytes, \\xe2), spaces and newlines shown as ␣ and ⏎; a
    SentencePiece entry's ▁ as ␣. An entry of another scheme that happens to be spelled in the
    byte alphabet (WordPiece's "café") does not decode as UTF-8 and is kept as it is."""
    if all(ch in BYTE_OF for ch in token):
        raw = bytes(BYTE_OF[ch] for ch in token)
        try:
            token = raw.decode("utf-8")
        except UnicodeDecodeError:
            if all(ord(ch) < 256 for ch in token):
                return token
            token = raw.decode("utf-8", errors="backslashreplace")
        return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return token.replace("▁", "␣")


def file_stem(run_id: str) -> str:
    """A run id made safe as a file name (user-given ids may hold '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id)
