"""What a reload changes: the keys that differ, which apply live, and how to show them.

``diff`` and ``merge_live`` are pure: the daemon (gatewayd/daemon.py) applies their result.
Secrets are masked in anything shown (``mask``, ``effective``).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from gatewayd.config import Config


@attrs.frozen
class Change:
    key: str
    old: Any
    new: Any
    #: True when the running daemon can apply it; False when it needs a restart.
    live: bool
    secret: bool


def flatten(config: Config) -> dict[str, tuple[Any, attrs.Attribute[Any]]]:
    out: dict[str, tuple[Any, attrs.Attribute[Any]]] = {}
    for section in attrs.fields(Config):
        section_value = getattr(config, section.name)
        for field in attrs.fields(type(section_value)):
            out[f"{section.name}.{field.name}"] = (getattr(section_value, field.name), field)
    return out


def diff(old: Config, new: Config) -> list[Change]:
    """The keys whose values differ, in declaration order. Pure."""
    before, after = flatten(old), flatten(new)
    changes = []
    for key, (new_value, field) in after.items():
        old_value = before[key][0]
        if old_value != new_value:
            changes.append(
                Change(
                    key=key,
                    old=old_value,
                    new=new_value,
                    live=not field.metadata.get("restart", False),
                    secret=bool(field.metadata.get("secret", False)),
                )
            )
    return changes


def merge_live(old: Config, new: Config) -> Config:
    """``new`` with every restart-only key kept at its ``old`` value."""
    sections = {}
    for section in attrs.fields(Config):
        new_section = getattr(new, section.name)
        old_section = getattr(old, section.name)
        kept = {
            f.name: getattr(old_section, f.name)
            for f in attrs.fields(type(new_section))
            if f.metadata.get("restart", False)
        }
        sections[section.name] = attrs.evolve(new_section, **kept)
    return Config(**sections)


def mask(key: str, value: Any, *, secret: bool) -> Any:
    """What may be shown of a value: secrets are masked, URLs lose their password."""
    if not secret or value in ("", None):
        return value
    if isinstance(value, str) and "://" in value:
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", value) if "@" in value else value
    return "***"


def effective(config: Config) -> dict[str, dict[str, Any]]:
    """The config as a nested dict with secrets masked (for check-config and logs)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (value, field) in flatten(config).items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = mask(
            key, value, secret=bool(field.metadata.get("secret"))
        )
    return out
