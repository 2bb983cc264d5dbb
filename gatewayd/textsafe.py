"""Text that PostgreSQL (and UTF-8) can hold, and a way back to the original.

WhatsApp and clients can hand us strings PostgreSQL refuses: NUL (text and jsonb reject
U+0000) and lone UTF-16 surrogates (not encodable as UTF-8 at all). Such a string is stored
*cleaned* — each offending code point replaced by U+FFFD — and its original is kept beside it
as an ASCII JSON string literal (``json.dumps``), which both columns accept and
``json.loads`` turns back into the exact original. Everything downstream (the forwarder, the
AI payload, replies) sees the cleaned text, so one odd character can never crash a task.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["REPLACEMENT", "clean", "clean_tree", "is_clean", "restore"]

REPLACEMENT = "\ufffd"

# NUL, and any surrogate code point (a str can hold them only unpaired: a pair decoded
# from UTF-16 is one astral code point in Python).
_BAD = re.compile("[\x00\ud800-\udfff]")


def is_clean(text: str) -> bool:
    """True when ``text`` can be stored and encoded as UTF-8 as it is."""
    return _BAD.search(text) is None


def clean(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD."""
    return _BAD.sub(REPLACEMENT, text)


def clean_tree(value: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """Clean every string (keys too) in a JSON-like tree.

    Returns the cleaned tree and, for each string that changed, its path (``a.b.0``) mapped to
    the original as an ASCII JSON literal.
    """
    escaped: dict[str, str] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            if is_clean(node):
                return node
            escaped[where] = json.dumps(node)
            return clean(node)
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            for key, item in node.items():
                name = walk(key, f"{where}.<key>") if isinstance(key, str) else key
                out[name] = walk(item, f"{where}.{name}" if where else str(name))
            return out
        if isinstance(node, list | tuple):
            items = [walk(item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(node)]
            return type(node)(items) if isinstance(node, tuple) else items
        return node

    return walk(value, path), escaped


def restore(literal: str) -> str:
    """The original string from the literal :func:`clean_tree` kept."""
    original = json.loads(literal)
    if not isinstance(original, str):
        raise ValueError("not an escaped string literal")
    return original
