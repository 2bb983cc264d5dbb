"""JSON shapes shared by the simnet server and its remote client.

Events travel as ``{"kind": <Event.kind>, ...fields}``; the saved network state uses the same
converter. Anything that does not parse raises ``WireError``, which both sides turn into a
clean refusal or a skipped event, never a crash.
"""

from __future__ import annotations

from typing import Any, cast

import cattrs
from cattrs.preconf.json import make_converter

from gatewayd.errors import WhatsAppError
from gatewayd.whatsapp.port import (
    ClientEvent,
    ClientOutdated,
    Connected,
    Disconnected,
    Event,
    LoggedOut,
    MessageReceived,
    Paired,
    PairingFailed,
    QrCode,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)
from gatewayd.whatsapp.sim import NetworkState

__all__ = ["WireError", "event_from_json", "event_to_json", "state_from_json", "state_to_json"]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        QrCode,
        Paired,
        PairingFailed,
        Connected,
        Disconnected,
        LoggedOut,
        StreamReplaced,
        TemporaryBan,
        ClientOutdated,
        MessageReceived,
        Receipt,
    )
}

STATE_VERSION = 1


class WireError(WhatsAppError):
    """A simnet message that does not have the expected shape."""


_converter = make_converter(forbid_extra_keys=False)


def event_to_json(event: ClientEvent) -> dict[str, Any]:
    """``{"kind": …, **fields}``."""
    data: dict[str, Any] = _converter.unstructure(event)
    return {"kind": event.kind, **data}


def event_from_json(data: object) -> ClientEvent:
    """The event ``data`` describes; ``WireError`` when it describes none."""
    if not isinstance(data, dict):
        raise WireError("an event must be a JSON object")
    cls = EVENT_TYPES.get(data.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise WireError(f"unknown event kind {data.get('kind')!r}")
    fields = {key: value for key, value in data.items() if key != "kind"}
    try:
        event = cast("ClientEvent", _converter.structure(fields, cls))
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise WireError(f"malformed {cls.kind} event: {exc}") from None
    return event


def _structure_queued(data: object, _: object) -> MessageReceived | Receipt:
    event = event_from_json(data)
    if not isinstance(event, MessageReceived | Receipt):
        raise WireError(f"a {event.kind} event cannot be queued")
    return event


_converter.register_structure_hook(MessageReceived | Receipt, _structure_queued)
_converter.register_unstructure_hook(MessageReceived | Receipt, event_to_json)


def state_to_json(state: NetworkState) -> dict[str, Any]:
    """The state file's content."""
    return {"version": STATE_VERSION, "network": _converter.unstructure(state)}


def state_from_json(data: object) -> NetworkState:
    """A saved network; ``WireError`` when the file is not one this version wrote."""
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise WireError(f"not a simnet state file of version {STATE_VERSION}")
    try:
        return _converter.structure(data.get("network"), NetworkState)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise WireError(f"malformed simnet state: {exc}") from None
