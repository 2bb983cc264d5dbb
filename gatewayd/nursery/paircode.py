"""Asking a running agent's client for a phone pairing code (``AgentHandle.pair_code``).

The code is only to be had while the agent's ``pair`` shows QR codes: the request waits (within
its timeout) for the first QR of a pairing that is starting, and is refused otherwise. The
number is normalised by ``gatewayd/jid.py`` like every recipient, so ``0812…``, ``+62 812-…`` and
``62812…`` ask for the same account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from gatewayd.errors import InvalidRecipient, NotConnected, WhatsAppError
from gatewayd.jid import normalize_recipient, phone_of
from gatewayd.whatsapp.port import PAIR_CODE_LIFETIME, PairCode

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

PAIR_CODE_WAIT = 30.0
"""Default longest wait for a pairing's first QR plus WhatsApp's answer with the code."""


def pairing_number(phone: object, *, default_country_code: str = "62") -> str:
    """The account's number in international digits (``"628123456789"``), or InvalidRecipient.

    A number as people write it, or a user JID (``628…@c.us``); a group or a LID is refused.
    """
    if not isinstance(phone, str):
        raise InvalidRecipient("'phone' must be a phone number")
    digits = phone_of(normalize_recipient(phone, default_country_code=default_country_code))
    if digits is None:
        raise InvalidRecipient(f"{phone!r} is not a phone number")
    return digits


async def request_code(
    handle: AgentHandle,
    phone: str,
    *,
    default_country_code: str = "62",
    timeout: float = PAIR_CODE_WAIT,  # noqa: ASYNC109 - a bound on the whole request
) -> PairCode:
    """A code linking ``phone`` to the agent's pairing; see ``AgentHandle.pair_code``."""
    digits = pairing_number(phone, default_country_code=default_country_code)
    with trio.move_on_after(timeout) as scope:
        while handle.qr.latest is None:
            if handle.connected or handle.done.is_set() or handle.terminal:
                raise NotConnected(
                    f"Session {handle.agent_id!r} is not waiting for a QR scan"
                    f" (status: {handle.status})"
                )
            await handle.qr.wait_next(timeout)
        code = await handle.client.pair_phone(digits)
        return PairCode(code, PAIR_CODE_LIFETIME)
    assert scope.cancelled_caught
    if handle.qr.latest is None:
        raise NotConnected(
            f"Session {handle.agent_id!r} showed no QR within {timeout:g} s"
            f" (status: {handle.status})"
        )
    raise WhatsAppError(f"WhatsApp gave no pairing code within {timeout:g} s")
