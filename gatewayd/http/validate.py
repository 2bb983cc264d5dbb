"""Reading a JSON request body at the HTTP edge, so that nothing a client can send gets past
the handlers' door in a shape that fails later (issue 8, "poison never kills an agent").

A body is refused with InvalidPayload (400) — before any use case runs, so before anything is
sent to WhatsApp or to the AI backend — when it:

- has a Content-Type that is not JSON (415, :class:`UnsupportedMediaType`); no Content-Type
  at all is read as JSON, as the deployed service's clients send it;
- is not UTF-8, not JSON, or not a JSON object;
- nests arrays/objects deeper than :data:`MAX_DEPTH` (Python's parser would otherwise raise
  RecursionError, and the AI call and the JSONB column would meet the same tree);
- has a number that is not finite (``1e999``, ``NaN``, ``Infinity``): JSON has no such value,
  PostgreSQL's JSONB refuses it and the AI backend could not read it back;
- repeats a key in one object (which of the two was meant is a guess);
- has a string — value or key, anywhere — containing NUL (PostgreSQL text and JSONB refuse
  it) or a lone surrogate (``"\\ud800"``: no UTF-8 encoding exists, so it can be neither sent
  nor stored). The message names the field, e.g. ``'metadata.chat_name'``.

Every string of the body is checked, not only the fields a route reads: the /run body is
forwarded to the AI and stored whole, and one rule for all routes is easier to trust.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gatewayd.errors import GatewayError, InvalidPayload

#: How deep arrays and objects may nest. Real bodies (the /run metadata) are a few levels.
MAX_DEPTH = 64

JSON_TYPES = ("application/json",)


class UnsupportedMediaType(GatewayError):
    """The request body is not JSON."""


def check_content_type(content_type: str | None) -> None:
    """Absent is fine; otherwise ``application/json`` or any ``+json`` type."""
    if content_type is None:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in JSON_TYPES or media_type.endswith("+json"):
        return
    shown = safe(media_type[:100]) or "(empty)"
    raise UnsupportedMediaType(f"Content-Type must be application/json, not {shown}")


def parse_body(body: bytes, *, any_text: bool = False) -> dict[str, Any]:
    """The JSON object in ``body``, checked as the module docstring says. ``any_text`` lets
    NUL and lone surrogates through (the simulated network's inject: WhatsApp can send them,
    and poison tests must be able to); every other check still applies."""
    if not body.strip():
        raise InvalidPayload("Request body must be a JSON object")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(
            f"Request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        value = json.loads(
            text,
            parse_float=_finite_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except InvalidPayload:
        raise
    except RecursionError:
        raise InvalidPayload(f"Request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() over its digit limit
        raise InvalidPayload(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidPayload("Request body must be a JSON object")
    check_tree(value, any_text=any_text)
    return value


def check_tree(root: dict[str, Any], *, any_text: bool = False) -> None:
    """Walk the parsed body once (iteratively): depth, and every key and string value."""
    stack: list[tuple[Any, str, int]] = [(root, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not any_text:
                check_text(value, path)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidPayload(f"Request body nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not any_text:
                        check_text(key, f"{path or 'the body'} (a key)")
                    stack.append((item, f"{path}.{key}" if path else key, depth + 1))
            else:
                for index, item in enumerate(value):
                    stack.append((item, f"{path}[{index}]", depth + 1))


def check_text(value: str, field: str) -> None:
    """InvalidPayload naming ``field`` if ``value`` holds NUL or a lone surrogate."""
    problem = text_problem(value)
    if problem is not None:
        raise InvalidPayload(f"'{safe(field)}' {problem}")


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (\\u{ord(value[exc.start]):04x})"
    return None


def escape(text: str) -> str:
    """``text`` with NUL and lone surrogates written as escapes, so it encodes as UTF-8."""
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode()


def safe(text: str) -> str:
    """``text`` fit to quote in an error message: escaped and short."""
    cleaned = escape(text)
    return cleaned if len(cleaned) <= 200 else cleaned[:200] + "…"


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidPayload(f"Request body has a number out of range: {literal[:40]}")
    return value


def _no_constant(literal: str) -> float:
    raise InvalidPayload(f"Request body is not valid JSON: {literal} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidPayload(f"Request body has the key '{safe(key)}' more than once")
            seen.add(key)
    return result
