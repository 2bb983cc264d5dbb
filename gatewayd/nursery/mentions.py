"""Whether a group message mentions the agent (docs/contract/agents-api.md §7.2: the mention
list holds the agent's number, or the text names it).

The text counts when it names the agent's own number as people write it: ``@628…`` (what
WhatsApp puts in the text of a mention), ``628…`` without the ``@``, ``+62 812-3456-789`` with
the separators ``gatewayd.jid`` accepts, or the national ``0812…`` form (``whatsapp.
default_country_code``). The number must stand on its own: a longer number that contains it
(``62812345678901``), or one glued to letters (``x628…``), does not count. A LID is random
digits, so it counts only as ``@<lid>``, which is how WhatsApp writes a mention by LID.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gatewayd.errors import InvalidRecipient
from gatewayd.jid import MAX_DIGITS, is_lid, normalize_recipient, phone_jid
from gatewayd.whatsapp.port import InboundMessage

_DIGIT_RUN = re.compile(r"[0-9]+")
# Between the digit groups of one written number: "+62 812-3456 (789)", "0812.3456.789".
# Newlines are not: two lines are two things.
_GAP = re.compile(r"[ \t\u00a0\-.()]{1,3}")
# "+62 (812) 3456-789" is four groups; more is a list of numbers, not one.
_MAX_GROUPS = 6


def mentions_agent(
    message: InboundMessage,
    *,
    own_jids: set[str],
    own_phone: str | None,
    default_country_code: str,
) -> bool:
    """Mentioned by phone JID or LID in the mention list, or by number in the text."""
    if own_jids.intersection(message.mentioned_jids):
        return True
    text = message.text
    if not text:
        return False
    if own_phone and names_number(text, own_phone, default_country_code=default_country_code):
        return True
    return any(_names_lid(text, jid.partition("@")[0]) for jid in own_jids if is_lid(jid))


def names_number(text: str, phone: str, *, default_country_code: str) -> bool:
    """Whether ``text`` writes the number ``phone`` (digits with country code), standing alone."""
    if not phone.isdigit():
        return False
    own = phone_jid(phone)
    # Only spans that could spell it are normalised: as many digits as the international form,
    # or as the national one (0 in place of the country code), ending the same way.
    lengths = {len(phone), len(phone) - len(default_country_code) + 1}
    tail = phone[len(default_country_code) :] if phone.startswith(default_country_code) else phone
    for written in _written_numbers(text, lengths, tail):
        try:
            if normalize_recipient(written, default_country_code=default_country_code) == own:
                return True
        except InvalidRecipient:
            continue
    return False


def _written_numbers(text: str, lengths: set[int], tail: str) -> Iterator[str]:
    """Each span of whole digit groups (joined by separators) with one of ``lengths`` digits,
    ending in ``tail``: never a part of a digit group, never glued to a letter."""
    runs = [(m.start(), m.end()) for m in _DIGIT_RUN.finditer(text)]
    joined = [
        i > 0 and _GAP.fullmatch(text, runs[i - 1][1], runs[i][0]) is not None
        for i in range(len(runs))
    ]
    for i, (start, _) in enumerate(runs):
        lead = start - 1 if start > 0 and text[start - 1] == "+" else start
        if lead > 0 and _is_word(text[lead - 1]):
            continue
        digits = ""
        for j in range(i, min(i + _MAX_GROUPS, len(runs))):
            if j > i and not joined[j]:
                break
            digits += text[runs[j][0] : runs[j][1]]
            if len(digits) > MAX_DIGITS + 1:  # + 1: a national number's leading 0
                break
            end = runs[j][1]
            if len(digits) not in lengths or not digits.endswith(tail):
                continue
            if end < len(text) and _is_word(text[end]):
                continue
            yield text[lead:end]


def _names_lid(text: str, lid: str) -> bool:
    return lid.isdigit() and re.search(rf"@{lid}(?![0-9])", text) is not None


def _is_word(char: str) -> bool:
    # Letters and digits of any script: "x628…" or "٣628…" is not the number on its own.
    return char.isalnum() or char == "_"
