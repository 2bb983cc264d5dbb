"""Phone numbers and JIDs: what clients send → what WhatsApp expects.

Clients of the deployed service write recipients many ways (docs/contract/agents-api.md §5): ``08…`` (a
national number), ``+62…`` or ``62…`` (international, with spaces, dashes or
parentheses), ``…@c.us`` (whatsapp-web.js's spelling, the contract's), and the
WhatsApp forms ``…@s.whatsapp.net``, ``…@g.us`` (groups) and ``…@lid`` (hidden
identities). ``normalize_recipient`` turns each into WhatsApp's spelling, with any
device part dropped (``628…:12@s.whatsapp.net`` is a device, the chat is
``628…@s.whatsapp.net``); ``to_contract_jid`` turns a JID back into the contract's
spelling for answers and AI payloads.

Everything here is pure. A value that cannot be a recipient raises
:class:`~gatewayd.errors.InvalidRecipient` with a message saying what is wrong.
"""

from __future__ import annotations

import re

from gatewayd.errors import InvalidRecipient

USER_SERVER = "s.whatsapp.net"
CONTRACT_USER_SERVER = "c.us"
GROUP_SERVER = "g.us"
LID_SERVER = "lid"
NEWSLETTER_SERVER = "newsletter"

#: E.164 allows at most 15 digits; real mobile numbers with a country code have at least 8.
MIN_DIGITS = 8
MAX_DIGITS = 15

# Separators people type inside a number: "+62 812-3456 (789)", "0812.3456.789".
_SEPARATORS = re.compile(r"[\s\-().]")
# user[.agent][:device] — whatsmeow's AD-JID form; only the user part names the chat.
_USER_PART = re.compile(r"(?P<user>[^.:]*)(?:\.(?P<agent>\d+))?(?::(?P<device>\d+))?")
# New groups are 120363… (18 digits); old ones creator-timestamp (628…-1600000000).
_GROUP_ID = re.compile(r"\d{10,25}|\d{5,15}-\d{9,11}")
_LID = re.compile(r"\d{6,20}")


def normalize_recipient(value: str, *, default_country_code: str = "62") -> str:
    """WhatsApp's JID for a number or JID a client sent.

    ``"0812-3456-789"`` → ``"628123456789@s.whatsapp.net"``;
    ``"628123456789@c.us"`` → ``"628123456789@s.whatsapp.net"``;
    ``"120363025246125486@g.us"`` and ``"200000000000002@lid"`` are kept (device part dropped).
    A leading ``0`` is a national number: it is replaced by ``default_country_code``.
    """
    _check_country_code(default_country_code)
    if not isinstance(value, str):
        raise InvalidRecipient(f"recipient must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InvalidRecipient("recipient is empty")
    if "@" not in text:
        return f"{_phone_digits(text, default_country_code)}@{USER_SERVER}"

    local, _, server = text.rpartition("@")
    server = server.lower()
    if server in (USER_SERVER, CONTRACT_USER_SERVER):
        user = _user_part(local, text)
        return f"{_phone_digits(user, default_country_code)}@{USER_SERVER}"
    if server == GROUP_SERVER:
        if not _GROUP_ID.fullmatch(local):
            raise InvalidRecipient(
                f"{text!r} is not a group id: expected digits like 120363…@g.us "
                "or 628…-1600000000@g.us"
            )
        return f"{local}@{GROUP_SERVER}"
    if server == LID_SERVER:
        user = _user_part(local, text)
        if not _LID.fullmatch(user):
            raise InvalidRecipient(f"{text!r} is not a LID: expected digits before @lid")
        return f"{user}@{LID_SERVER}"
    if not server:
        raise InvalidRecipient(f"{text!r} has nothing after '@'")
    raise InvalidRecipient(
        f"{text!r} has an unknown server {server!r}: expected @c.us, @s.whatsapp.net, @g.us or @lid"
    )


def to_contract_jid(jid: str) -> str:
    """The contract's spelling of a JID: ``628…@s.whatsapp.net`` → ``628…@c.us``.

    Device parts are dropped; groups, LIDs and other servers are returned unchanged.
    """
    local, at, server = jid.rpartition("@")
    if not at:
        return jid
    if server.lower() in (USER_SERVER, CONTRACT_USER_SERVER):
        return f"{_strip_device(local)}@{CONTRACT_USER_SERVER}"
    if server.lower() == LID_SERVER:
        return f"{_strip_device(local)}@{LID_SERVER}"
    return jid


def phone_of(jid: str) -> str | None:
    """The phone number (digits, with country code) of a user JID; None for groups, LIDs, others."""
    local, at, server = jid.rpartition("@")
    if not at or server.lower() not in (USER_SERVER, CONTRACT_USER_SERVER):
        return None
    user = _strip_device(local)
    return user if user.isdigit() else None


def lid_of(jid: str) -> str | None:
    """The digits of a hidden-identity JID (``…@lid``, device part dropped); None for others."""
    local, at, server = jid.rpartition("@")
    if not at or server.lower() != LID_SERVER:
        return None
    user = _strip_device(local)
    return user if user.isdigit() else None


def is_group(jid: str) -> bool:
    """True for a group JID (``…@g.us``)."""
    return jid.lower().endswith("@" + GROUP_SERVER)


def is_lid(jid: str) -> bool:
    """True for a hidden-identity JID (``…@lid``)."""
    return jid.lower().endswith("@" + LID_SERVER)


def phone_jid(phone: str, device: int | None = None) -> str:
    """The user JID of a phone number (digits with country code); with ``device``, that device's."""
    return f"{phone}:{device}@{USER_SERVER}" if device is not None else f"{phone}@{USER_SERVER}"


def lid_jid(lid: str) -> str:
    """A hidden-identity JID from its number, or the JID itself."""
    return lid if is_lid(lid) else f"{lid}@{LID_SERVER}"


def group_jid(group: str) -> str:
    """A group JID from its id, or the JID itself."""
    return group if is_group(group) else f"{group}@{GROUP_SERVER}"


def non_ad(jid: str) -> str:
    """A device JID's user: ``628…:12@s.whatsapp.net`` → ``628…@s.whatsapp.net``."""
    user, _, server = jid.partition("@")
    return f"{user.partition(':')[0]}@{server}"


def group_id_of(jid: str) -> str:
    """A group's id without its server (``120363…@g.us`` → ``120363…``), as answers show it."""
    return jid.rpartition("@")[0] or jid


def newsletter_jid(channel: str) -> str:
    """A channel (newsletter) JID from its id, or the JID itself."""
    return channel if "@" in channel else f"{channel}@{NEWSLETTER_SERVER}"


def is_user(jid: str) -> bool:
    """True for a phone-number user JID (``…@s.whatsapp.net``)."""
    return jid.lower().endswith("@" + USER_SERVER)


def _phone_digits(text: str, default_country_code: str) -> str:
    """The international digits of a number as typed, or InvalidRecipient saying why not."""
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("+"):
        digits = compact[1:]
        international = True
    else:
        digits = compact
        international = False
    if not digits:
        raise InvalidRecipient(f"{text!r} has no digits")
    if any(c.isalpha() for c in digits):
        raise InvalidRecipient(f"{text!r} contains letters; a phone number has only digits")
    bad = next((c for c in digits if not ("0" <= c <= "9")), None)
    if bad is not None:
        raise InvalidRecipient(f"{text!r} contains {bad!r}; a phone number has only digits")
    if international:
        if digits.startswith("0"):
            raise InvalidRecipient(f"{text!r}: a country code never starts with 0")
    elif digits.startswith("00"):
        # 00 is an international dialling prefix in some countries, not a national number;
        # guessing would send to the wrong person.
        raise InvalidRecipient(f"{text!r} starts with 00: write it as +<country code><number>")
    elif digits.startswith("0"):
        digits = default_country_code + digits[1:]
    if len(digits) < MIN_DIGITS:
        raise InvalidRecipient(
            f"{text!r} is too short: {len(digits)} digits with the country code, "
            f"at least {MIN_DIGITS}"
        )
    if len(digits) > MAX_DIGITS:
        raise InvalidRecipient(
            f"{text!r} is too long: {len(digits)} digits, at most {MAX_DIGITS} (E.164)"
        )
    return digits


def _user_part(local: str, whole: str) -> str:
    """The user of ``user[.agent][:device]``, or InvalidRecipient when the form is wrong."""
    match = _USER_PART.fullmatch(local)
    if match is None or not match["user"]:
        raise InvalidRecipient(f"{whole!r}: expected a number (optionally :device) before '@'")
    return match["user"]


def _strip_device(local: str) -> str:
    match = _USER_PART.fullmatch(local)
    return match["user"] if match is not None else local


def _check_country_code(code: str) -> None:
    # A configuration mistake, not a client's: ValueError, so it is not reported as a 400.
    if not (code.isdigit() and code.isascii() and 1 <= len(code) <= 3 and code[0] != "0"):
        raise ValueError(
            f"default_country_code must be 1–3 digits not starting with 0, got {code!r}"
        )
