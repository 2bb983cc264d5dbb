"""Phone pairing codes on the simulated network, shaped like whatsmeow's.

whatsmeow's ``PairPhone`` strips everything but digits from the number, refuses one of six digits
or fewer and one starting with ``0`` (not international), and answers 8 characters of its own
base-32 alphabet (no ``0``, ``I``, ``O``, ``U``) as ``XXXX-XXXX``. The phone shows 8 boxes; people
type the code with or without the dash, in either case.
"""

from __future__ import annotations

import random

import attrs

from gatewayd.errors import InvalidRecipient, WhatsAppError

PAIR_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
"""whatsmeow's linking-code alphabet (``linkingBase32``)."""


class PairCodeRefused(WhatsAppError):
    """The phone refused a typed code: wrong, expired, or asked for another number."""


@attrs.frozen
class PhoneCode:
    """A code handed out for ``phone``, honoured until ``expires_at`` (virtual time)."""

    code: str
    phone: str
    expires_at: float


def pairing_digits(phone: str) -> str:
    """The digits whatsmeow would send for ``phone``, or ``InvalidRecipient`` as it refuses."""
    digits = "".join(ch for ch in phone if "0" <= ch <= "9")
    if len(digits) <= 6:
        raise InvalidRecipient(f"phone number too short: {phone!r}")
    if digits.startswith("0"):
        raise InvalidRecipient(f"phone number is not international: {phone!r}")
    return digits


def new_code(rng: random.Random) -> str:
    """A fresh code: ``"XXXX-XXXX"``."""
    chars = "".join(rng.choice(PAIR_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def same_code(typed: str, code: str) -> bool:
    """Whether ``typed`` is ``code`` as a person may type it (any case, dash or spaces or not)."""
    return _compact(typed) == _compact(code)


def _compact(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch not in "- ")
