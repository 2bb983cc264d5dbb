"""Regenerate openapi.json (repo root) and gatewayd/openapi.json from openapi.yaml.

    python3 tools/openapi_json.py          # write both files
    python3 tools/openapi_json.py --check  # exit 1 if either is out of date

openapi.yaml is the source. It is written in a small YAML subset so that no YAML library
is needed (the project does not depend on one): block mappings and block sequences by
indentation, ``- key: value`` items, full-line ``#`` comments, plain scalars (strings,
integers, floats, true/false/null), single- or double-quoted scalars (double-quoted ones
are JSON strings), and flow values written as JSON (``{...}``, ``[...]``). Anything else
is an error with its line number. The result equals what a YAML parser would produce.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "openapi.yaml"
TARGETS = (ROOT / "openapi.json", ROOT / "gatewayd" / "openapi.json")

_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


class YamlSubsetError(ValueError):
    pass


def parse_yaml(text: str) -> Any:
    """Parse the YAML subset described in the module docstring."""
    lines: list[tuple[int, int, str]] = []  # (line number, indent, content)
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lines.append((number, len(raw) - len(raw.lstrip(" ")), raw.rstrip().lstrip(" ")))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][1])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][0]}: unexpected indentation")
    return value


def _block(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][2] == "-" or lines[i][2].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        if not (content == "-" or content.startswith("- ")):
            raise YamlSubsetError(f"line {number}: expected '- ' in a sequence")
        rest = content[2:].strip() if content != "-" else ""
        if not rest:
            if i + 1 < len(lines) and lines[i + 1][1] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][1])
            else:
                value, i = None, i + 1
        elif rest == "-" or rest.startswith("- ") or _split_key(rest, number) is not None:
            # "- key: value" or "- - item": a block whose first line is on the dash line.
            inner = indent + 2 + (len(content[2:]) - len(content[2:].lstrip(" ")))
            patched = [*lines[:i], (number, inner, rest), *lines[i + 1 :]]
            value, i = _block(patched, i, inner)
        else:
            value, i = _scalar(rest, number), i + 1
        items.append(value)
    if i < len(lines) and lines[i][1] > indent:
        raise YamlSubsetError(f"line {lines[i][0]}: unexpected indentation")
    return items, i


def _mapping(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        split = _split_key(content, number)
        if split is None:
            raise YamlSubsetError(f"line {number}: expected 'key: value'")
        key, rest = split
        if key in result:
            raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
        if rest:
            result[key], i = _scalar(rest, number), i + 1
        elif i + 1 < len(lines) and lines[i + 1][1] > indent:
            result[key], i = _block(lines, i + 1, lines[i + 1][1])
        else:
            result[key], i = None, i + 1
    if i < len(lines) and lines[i][1] > indent:
        raise YamlSubsetError(f"line {lines[i][0]}: unexpected indentation")
    return result, i


def _split_key(content: str, number: int) -> tuple[str, str] | None:
    """(key, rest) of ``key: rest`` / ``key:``, or None when the line is no mapping entry."""
    if content[0] in "\"'":
        quote = content[0]
        end = content.find(quote, 1)
        while quote == "'" and end != -1 and content[end + 1 : end + 2] == "'":
            end = content.find(quote, end + 2)
        if end == -1:
            raise YamlSubsetError(f"line {number}: unterminated quote")
        after = content[end + 1 :]
        if not (after == ":" or after.startswith(": ")):
            return None
        return str(_scalar(content[: end + 1], number)), after[1:].strip()
    if content[0] in "[{":
        return None
    match = re.match(r"([^:#]|:(?=\S))+?:(\s|$)", content)
    if match is None:
        return None
    key = match.group(0).rstrip()[:-1]
    return key, content[match.end() :].strip()


def _scalar(text: str, number: int) -> Any:
    try:
        if text[0] in '[{"':
            return json.loads(text)
    except ValueError as exc:
        raise YamlSubsetError(f"line {number}: flow values must be JSON: {exc}") from None
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'":
            raise YamlSubsetError(f"line {number}: unterminated quote")
        return text[1:-1].replace("''", "'")
    if text[0] in "|>&*!%@`" or " #" in text:
        raise YamlSubsetError(f"line {number}: not in the supported YAML subset: {text!r}")
    if text in ("null", "~", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text.lower() in ("yes", "no", "on", "off"):
        raise YamlSubsetError(f"line {number}: quote {text!r} (YAML 1.1 reads it as a boolean)")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if re.fullmatch(r"\d{4}-\d\d-\d\d.*", text):
        raise YamlSubsetError(f"line {number}: quote {text!r} (YAML reads it as a date)")
    return text


def load_document(source: Path = SOURCE) -> dict[str, Any]:
    document = parse_yaml(source.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise YamlSubsetError(f"{source}: the document is not a mapping")
    return document


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    expected = render_json(load_document())
    if "--check" in argv:
        stale = [
            str(t.relative_to(ROOT))
            for t in TARGETS
            if not t.exists() or t.read_text(encoding="utf-8") != expected
        ]
        for name in stale:
            print(f"{name} is out of date: run python3 tools/openapi_json.py", file=sys.stderr)
        return 1 if stale else 0
    for target in TARGETS:
        target.write_text(expected, encoding="utf-8")
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
