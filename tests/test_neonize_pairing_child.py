"""The pairing child's callbacks on a real (never connected) neonize client: it reports the
device and exits the moment whatsmeow says the pairing succeeded, ends a passkey-protected
pairing with its own reason, and pairs by phone code as the browser its QR code names.

Events go in through ``Event.execute`` and the login status through a ctypes callback of
neonize's own type, as Go hands them over; the child's exit is recorded instead of taken.
"""

from __future__ import annotations

import ctypes
import io
import json
from pathlib import Path
from typing import Any

import pytest

from gatewayd.whatsapp.neonize.env import device_props, import_neonize
from gatewayd.whatsapp.neonize.pairing_child import (
    EXIT_FAILED,
    EXIT_PAIRED,
    PASSKEY_REQUIRED,
    PairingHandlers,
    _Reporter,
    login_status_reason,
    phone_pairing_client,
)

import_neonize()  # before any other neonize import: it leaks a pipe at import (silenced there)

from neonize._binder import func_string  # noqa: E402
from neonize.client import NewClient  # noqa: E402
from neonize.events import EVENT_TO_INT, ConnectedEv, PairStatusEv  # noqa: E402
from neonize.proto.Neonize_pb2 import JID, Device  # noqa: E402
from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import (  # noqa: E402
    DeviceProps,
)
from neonize.utils.enum import ClientName, ClientType  # noqa: E402

ME, ME_LID = "628111000111", "111222333444555"


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> JID:
    return JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


class RecordingClient(NewClient):  # type: ignore[misc]
    """neonize's client, noting the arguments of ``PairPhone`` before making the real call."""

    pair_phone_calls: list[tuple[Any, ...]]

    def PairPhone(self, *args: Any) -> str:  # noqa: N802 - neonize's name
        self.pair_phone_calls.append(args)
        result: str = super().PairPhone(*args)
        return result


class Child:
    """The child's handlers on a real client, with its output and exits recorded."""

    def __init__(self, tmp_path: Path, phone: str | None = None) -> None:
        self.out = io.StringIO()
        self.exits: list[int] = []
        self.nc = RecordingClient(
            str(tmp_path / "unused.db"),
            uuid=f"pair-test-{id(self)}",
            new_device=True,
            props=device_props("gatewayd"),
        )
        self.nc.pair_phone_calls = []
        self.nc._stop_finalizer.detach()  # never registered in Go: nothing to stop
        self.handlers = PairingHandlers(self.nc, _Reporter(self.out, exit=self.exits.append), phone)
        self.handlers.attach()

    def execute(self, event: Any, code: int) -> None:
        """What neonize's ctypes callback does with Go's bytes."""
        data = event.SerializeToString()
        buffer = ctypes.create_string_buffer(data, len(data))
        self.nc.event.execute(self.nc.uuid, ctypes.addressof(buffer), len(data), code)

    def login_status(self, status: str) -> None:
        """A login status through a ctypes callback of neonize's own type, as Go calls it."""
        callback = func_string(self.nc._NewClient__onLoginStatus)
        buffer = ctypes.create_string_buffer(status.encode())
        callback(None, ctypes.addressof(buffer))

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


def test_child_reports_the_device_and_exits_as_soon_as_pairing_succeeds(tmp_path: Path) -> None:
    """PairSuccess ends the child at once, with device, LID and push name; nothing after it."""
    child = Child(tmp_path)
    me = Device(
        JID=jid(ME, device=12), LID=jid(ME_LID, "lid", device=12), PushName="Shop",
        Platform="android", BussinessName="", Initialized=True,
    )  # fmt: skip
    child.execute(me, 0)  # neonize's first callback: the stored device
    success = PairStatusEv(
        ID=jid(ME, device=12), Status=PairStatusEv.SUCCESS, Platform="android", BusinessName=""
    )
    child.execute(success, EVENT_TO_INT[PairStatusEv])
    assert child.exits == [EXIT_PAIRED]
    assert child.lines() == [
        {
            "type": "paired",
            "device_jid": f"{ME}:12@s.whatsapp.net",
            "phone": ME,
            "platform": "android",
            "push_name": "Shop",
            "lid": f"{ME_LID}@lid",
        }
    ]
    # Whatever whatsmeow delivers afterwards (in the real child the process is gone) is not
    # waited for and adds nothing.
    child.execute(ConnectedEv(status=True), EVENT_TO_INT[ConnectedEv])
    assert child.exits == [EXIT_PAIRED] and len(child.lines()) == 1


def test_passkey_protected_account_ends_pairing_with_its_own_reason(tmp_path: Path) -> None:
    """whatsmeow's passkey request ends the pairing as failed: "passkey_required"."""
    child = Child(tmp_path)
    child.login_status("passkey-request")
    assert child.lines() == [{"type": "failed", "reason": PASSKEY_REQUIRED}]
    assert child.exits == [EXIT_FAILED]
    assert child.handlers.done.is_set()


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("passkey-request", "passkey_required"),
        ("timeout", "timeout"),
        ("err-client-outdated", "err-client-outdated"),
        ("error", "error"),
        ("success", None),
        ("", None),
    ],
)
def test_login_statuses_and_the_reasons_they_end_pairing_with(
    status: str, reason: str | None
) -> None:
    """Only the passkey request is renamed; "success" does not end the pairing by itself."""
    assert login_status_reason(status) == reason


def test_phone_pairing_names_the_browser_the_qr_code_names(tmp_path: Path) -> None:
    """Phone-code pairing announces Safari for SAFARI device props, not neonize's OPERA."""
    props = device_props("gatewayd")
    assert ClientType(props.platformType) == ClientType.OPERA  # neonize's own default: wrong
    child = Child(tmp_path, phone="628123456789")
    child.handlers.pair_phone()  # the real call fails: nothing is connected
    ((phone, _notify, client_name, client_type),) = child.nc.pair_phone_calls
    assert phone == "628123456789"
    assert (client_type, client_name) == (ClientType.SAFARI, ClientName.LINUX)
    assert f"{client_type.name} ({client_name.name})" == "Safari (Linux)"
    assert child.lines()[0]["type"] == "failed"


# whatsmeow's PairClientType values (pair-code.go) for the DeviceProps platforms that
# getQRClientType (pair.go) maps to a browser for the QR code.
_WHATSMEOW_PAIR_CLIENT = {
    "CHROME": 1, "EDGE": 2, "FIREFOX": 3, "IE": 4, "OPERA": 5, "SAFARI": 6, "UWP": 8,
}  # fmt: skip


@pytest.mark.parametrize("platform", sorted(_WHATSMEOW_PAIR_CLIENT))
def test_phone_pairing_client_type_matches_whatsmeows_qr_mapping(platform: str) -> None:
    """Each browser platform pairs by code as the same client type its QR code announces."""
    props = DeviceProps(os="gatewayd", platformType=DeviceProps.PlatformType.Value(platform))
    client_type, _name = phone_pairing_client(props)
    assert client_type.value == _WHATSMEOW_PAIR_CLIENT[platform]
