"""Numbers and JIDs: what clients send → WhatsApp's spelling, and back."""

from __future__ import annotations

import pytest

from gatewayd.errors import InvalidPayload, InvalidRecipient
from gatewayd.jid import is_group, is_lid, normalize_recipient, phone_of, to_contract_jid

USER = "6281234567890@s.whatsapp.net"

ACCEPTED = [
    # national numbers: leading 0 → default country code
    ("081234567890", USER),
    ("0812-3456-7890", USER),
    ("0812 3456 7890", USER),
    ("(0812) 3456.7890", USER),
    # international
    ("+6281234567890", USER),
    ("+62 812-3456-7890", USER),
    ("+62 (812) 3456 7890", USER),
    ("6281234567890", USER),
    ("  6281234567890\n", USER),
    ("+14155552671", "14155552671@s.whatsapp.net"),
    ("+447911123456", "447911123456@s.whatsapp.net"),
    # user JIDs: the contract's spelling and WhatsApp's, devices dropped
    ("6281234567890@c.us", USER),
    ("6281234567890@C.US", USER),
    ("6281234567890@s.whatsapp.net", USER),
    ("6281234567890:12@s.whatsapp.net", USER),
    ("6281234567890.0:3@s.whatsapp.net", USER),
    ("081234567890@c.us", USER),
    ("+6281234567890@c.us", USER),
    # groups, new and old ids
    ("120363025246125486@g.us", "120363025246125486@g.us"),
    ("6281234567890-1600000000@g.us", "6281234567890-1600000000@g.us"),
    # hidden identities
    ("200000000000002@lid", "200000000000002@lid"),
    ("200000000000002:7@lid", "200000000000002@lid"),
    # limits of E.164
    ("+12345678", "12345678@s.whatsapp.net"),
    ("+123456789012345", "123456789012345@s.whatsapp.net"),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_normalize_accepts(value: str, expected: str) -> None:
    """Every accepted spelling of a recipient becomes WhatsApp's JID."""
    assert normalize_recipient(value) == expected


REFUSED = [
    ("", "empty"),
    ("   ", "empty"),
    ("abc", "letters"),
    ("0812abc7890", "letters"),
    ("62812#4567890", "'#'"),
    ("+", "no digits"),
    ("--", "no digits"),
    ("081234", "too short"),
    ("+1234567", "too short"),
    ("+1234567890123456", "too long"),
    ("08123456789012345", "too long"),
    ("+0812345678", "never starts with 0"),
    ("006281234567890", "starts with 00"),
    ("6281234567890@example.com", "unknown server"),
    ("status@broadcast", "unknown server"),
    ("120363025246125486@newsletter", "unknown server"),
    ("6281234567890@", "nothing after '@'"),
    ("@c.us", "expected a number"),
    ("abc@c.us", "letters"),
    ("628123:x@s.whatsapp.net", "expected a number"),
    ("12345@c.us", "too short"),
    ("hello@g.us", "not a group id"),
    ("123@g.us", "not a group id"),
    ("6281234567890-16@g.us", "not a group id"),
    ("abc@lid", "not a LID"),
    ("12@lid", "not a LID"),
]


@pytest.mark.parametrize(("value", "why"), REFUSED)
def test_normalize_refuses(value: str, why: str) -> None:
    """A value that cannot be a recipient raises InvalidRecipient saying what is wrong."""
    with pytest.raises(InvalidRecipient) as caught:
        normalize_recipient(value)
    assert why in caught.value.message
    assert isinstance(caught.value, InvalidPayload)  # so HTTP answers 400 INVALID_PAYLOAD


@pytest.mark.parametrize("value", [None, 6281234567890, ["6281234567890"]])
def test_normalize_refuses_non_strings(value: object) -> None:
    """A recipient that is not a string is refused, not crashed on."""
    with pytest.raises(InvalidRecipient, match="must be a string"):
        normalize_recipient(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "code", "expected"),
    [
        ("081234567890", "1", "181234567890@s.whatsapp.net"),
        ("07911123456", "44", "447911123456@s.whatsapp.net"),
        ("+6281234567890", "44", USER),
        ("6281234567890", "44", USER),
    ],
)
def test_default_country_code_applies_only_to_national_numbers(
    value: str, code: str, expected: str
) -> None:
    """The configured country code replaces a leading 0 and nothing else."""
    assert normalize_recipient(value, default_country_code=code) == expected


@pytest.mark.parametrize("code", ["", "0", "062", "+62", "1234", "a"])
def test_bad_default_country_code_is_a_configuration_error(code: str) -> None:
    """A malformed configured country code is a ValueError, not the client's 400."""
    with pytest.raises(ValueError, match="default_country_code"):
        normalize_recipient("081234567890", default_country_code=code)


@pytest.mark.parametrize(
    ("jid", "contract"),
    [
        (USER, "6281234567890@c.us"),
        ("6281234567890:12@s.whatsapp.net", "6281234567890@c.us"),
        ("6281234567890@c.us", "6281234567890@c.us"),
        ("120363025246125486@g.us", "120363025246125486@g.us"),
        ("200000000000002:3@lid", "200000000000002@lid"),
        ("status@broadcast", "status@broadcast"),
        ("6281234567890", "6281234567890"),
    ],
)
def test_to_contract_jid(jid: str, contract: str) -> None:
    """User JIDs are spelled @c.us for clients; groups, LIDs and others are unchanged."""
    assert to_contract_jid(jid) == contract


@pytest.mark.parametrize(
    ("jid", "phone", "group", "lid"),
    [
        (USER, "6281234567890", False, False),
        ("6281234567890:12@s.whatsapp.net", "6281234567890", False, False),
        ("6281234567890@c.us", "6281234567890", False, False),
        ("120363025246125486@g.us", None, True, False),
        ("6281234567890-1600000000@g.us", None, True, False),
        ("200000000000002@lid", None, False, True),
        ("status@broadcast", None, False, False),
        ("6281234567890", None, False, False),
    ],
)
def test_classifiers(jid: str, phone: str | None, group: bool, lid: bool) -> None:
    """phone_of, is_group and is_lid read a JID's kind and number."""
    assert (phone_of(jid), is_group(jid), is_lid(jid)) == (phone, group, lid)


@pytest.mark.parametrize(("value", "_"), ACCEPTED)
def test_normalize_is_idempotent_and_round_trips(value: str, _: str) -> None:
    """A normalised JID normalises to itself, also from its contract spelling."""
    jid = normalize_recipient(value)
    assert normalize_recipient(jid) == jid
    assert normalize_recipient(to_contract_jid(jid)) == jid
