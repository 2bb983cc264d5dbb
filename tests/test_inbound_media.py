"""Inbound media: downloaded through the WhatsApp port after the message is committed, kept
under the data directory for a retention period, served by signed expiring links without
credentials (gatewayd/media/, gatewayd/http/routes_media.py)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.errors import NotConnected, WhatsAppError
from gatewayd.media import links
from gatewayd.media.fetch import InboundMedia
from gatewayd.media.files import delete_old_media, media_file, write_media
from gatewayd.nursery.cleanup import run_cleanup
from gatewayd.usecases.tokens import AuthSecrets
from gatewayd.whatsapp.port import MediaType
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.gateway_fixtures import Running, make_config

PHONE = "628123450001"
CUSTOMER = "628555000111"
AGENT = "media-bot"


@pytest.fixture
async def gateway_config(pg_dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    media = {"inbound_dir": str(tmp_path / "inbound"), "inbound_max_bytes": 256 * 1024}
    media.update(getattr(request, "param", {}))
    return make_config(
        pg_dsn,
        media=media,
        database={"data_dir": str(tmp_path / "data")},
        sessions={"qr_wait": 5.0, "create_qr_wait": 2.0},
        # No AI: a text is recorded at once (an AI failure would send a report, which a
        # stalled network would hold).
        forwarding={"enabled": False},
    )


@attrs.define
class MediaDaemon:
    running: Running
    media: InboundMedia
    base_url: str
    inbound: Path

    @property
    def sim(self) -> SimulatedWhatsApp:
        backend = self.running.gateway.backend
        assert isinstance(backend, SimulatedWhatsApp)
        return backend


@pytest.fixture
async def daemon(running: Running, gateway_config: Config) -> MediaDaemon:
    """The running daemon, with its media downloader and link route."""
    inbound = Path(gateway_config.media.inbound_dir)
    return MediaDaemon(running, running.gateway.services.media, running.base_url, inbound)


async def connect(d: MediaDaemon, agent_id: str = AGENT) -> None:
    r = await d.running.client.post(
        "/sessions",
        json={"userId": "u1", "agentId": agent_id, "agentName": "Media", "apikey": "KEY"},
    )
    assert r.status_code in (200, 201), r.text
    with trio.fail_after(10):
        while d.sim.current_qr(agent_id) is None:
            await trio.sleep(0.01)
    d.sim.scan(agent_id, PHONE)
    with trio.fail_after(10):
        while not ((h := d.running.gateway.agents.get(agent_id)) and h.connected):
            await trio.sleep(0.01)


async def row_of(d: MediaDaemon, wa_id: str) -> tuple[int, str, dict[str, Any] | None, Any]:
    """(row id, type, media column, handled_at) of an inbound message, once it is stored."""

    def work(conn: Any) -> Any:
        return conn.execute(
            "SELECT id, type, media, handled_at FROM messages WHERE wa_message_id = %s",
            (wa_id,),
        ).fetchone()

    with trio.fail_after(10):
        while (row := await d.running.gateway.db.run(work)) is None:
            await trio.sleep(0.01)
    return int(row[0]), str(row[1]), row[2], row[3]


async def settled(d: MediaDaemon, wa_id: str) -> tuple[int, dict[str, Any]]:
    """The row id and media column once the download is stored or failed."""
    with trio.fail_after(10):
        while True:
            row_id, _, media, _ = await row_of(d, wa_id)
            if media is not None and ("stored" in media or "download_error" in media):
                return row_id, media
            await trio.sleep(0.02)


def url_for(d: MediaDaemon, row_id: int, kind: str = "image", **kw: Any) -> str:
    url = d.media.url(row_id, kind, **kw)
    assert url is not None
    return url


KINDS: list[tuple[MediaType, str, str | None, str]] = [
    ("image", "image/jpeg", None, "inline"),
    ("document", "application/vnd.ms-excel", "report Q1.xls", "attachment"),
    ("audio", "audio/ogg; codecs=opus", None, "inline"),
    ("video", "video/mp4", None, "inline"),
]


async def test_each_media_kind_is_downloaded_kept_and_served_by_a_signed_link(
    daemon: MediaDaemon,
) -> None:
    """Image, document, audio and video are fetched after commit and served without auth."""
    await connect(daemon)
    sent = []
    for n, (kind, mimetype, filename, _) in enumerate(KINDS):
        data = os.urandom(1000 + n * 3000)
        message = daemon.sim.inject_media(
            AGENT, kind, CUSTOMER, mimetype=mimetype, filename=filename, data=data
        )
        sent.append((message.id, data))
    async with httpx.AsyncClient(timeout=10) as anonymous:
        for (wa_id, data), (kind, mimetype, filename, disposition) in zip(sent, KINDS, strict=True):
            row_id, media = await settled(daemon, wa_id)
            assert media["stored"]["bytes"] == len(data), media
            assert "ref" not in media  # the adapter's keys stay out of the media column
            assert media_file(daemon.inbound, row_id).read_bytes() == data
            url = url_for(daemon, row_id, kind)
            assert url.startswith(daemon.base_url + f"/media/{row_id}/")
            r = await anonymous.get(url)
            assert r.status_code == 200, r.text
            assert r.content == data
            assert r.headers["content-type"] == mimetype.split(";")[0]
            assert r.headers["content-length"] == str(len(data))
            assert r.headers["content-disposition"].startswith(disposition)
            if filename:
                assert "report%20Q1.xls" in r.headers["content-disposition"]


async def test_links_use_app_base_url_and_are_none_for_text(daemon: MediaDaemon) -> None:
    """media_url is built on server.base_url when set, else the listen address; text has none."""
    secrets = daemon.running.gateway.services.secrets
    config = daemon.running.gateway.config
    assert links.public_base(config, ["http://127.0.0.1:4321"]) == "http://127.0.0.1:4321"
    based = attrs.evolve(config, server=attrs.evolve(config.server, base_url="https://wa.ex.com/"))
    assert links.public_base(based, ["http://127.0.0.1:4321"]) == "https://wa.ex.com"
    url = links.media_url("https://wa.ex.com", secrets, 7, "video", now=1000.0, ttl=60)
    assert url == f"https://wa.ex.com/media/7/1060/{links.signature(secrets, 7, 1060)}"
    assert links.media_url("https://wa.ex.com", secrets, 7, "text", now=1000.0, ttl=60) is None
    # The link key is derived, not the login token key itself.
    assert links.link_key(secrets) != secrets.jwt_key


async def test_expired_or_tampered_links_are_403_and_unknown_rows_404(
    daemon: MediaDaemon,
) -> None:
    """A past expiry, an altered signature, row or expiry is 403; a signed unknown row is 404."""
    await connect(daemon)
    message = daemon.sim.inject_media(AGENT, "image", CUSTOMER, size=2048)
    row_id, _ = await settled(daemon, message.id)
    ttl = daemon.running.gateway.config.media.link_ttl
    good = url_for(daemon, row_id)
    _, _, _, expires, sig = good.rsplit("/", 4)
    base = daemon.base_url
    bad_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused = [
        url_for(daemon, row_id, now=time.time() - 2 * ttl),  # expired
        f"{base}/media/{row_id}/{expires}/{bad_sig}",
        f"{base}/media/{row_id + 1}/{expires}/{sig}",
        f"{base}/media/{row_id}/{int(expires) + 1}/{sig}",
        f"{base}/media/{row_id}/{expires}/{sig}x",
        f"{base}/media/{row_id}/-5/{sig}",
    ]
    async with httpx.AsyncClient(timeout=10) as anonymous:
        assert (await anonymous.get(good)).status_code == 200
        for url in refused:
            r = await anonymous.get(url)
            assert r.status_code == 403, (url, r.text)
            assert r.json()["error"]["code"] == "FORBIDDEN"
        unknown = url_for(daemon, 987_654_321)
        r = await anonymous.get(unknown)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", r.text
        for path in (f"/media/{row_id}/{expires}/..%2F..%2Fetc%2Fpasswd", "/media/12abc/1/x"):
            r = await anonymous.get(base + path)
            assert r.status_code == 404, (path, r.text)


async def test_a_failing_download_is_marked_and_blocks_nothing(daemon: MediaDaemon) -> None:
    """A download WhatsApp refuses marks the row; later messages are handled and downloaded."""
    await connect(daemon)
    gone = daemon.sim.inject_media(AGENT, "video", CUSTOMER, downloadable=False)
    text = daemon.sim.inject_text(AGENT, CUSTOMER, "after the broken video")
    fine = daemon.sim.inject_media(AGENT, "image", CUSTOMER, size=4096)
    gone_row, gone_media = await settled(daemon, gone.id)
    assert "expired on the server" in gone_media["download_error"]
    assert "stored" not in gone_media
    _, fine_media = await settled(daemon, fine.id)
    assert fine_media["stored"]["bytes"] == 4096
    with trio.fail_after(10):
        for wa_id in (text.id, gone.id):  # both handled: the failure held up nothing
            while (await row_of(daemon, wa_id))[3] is None:
                await trio.sleep(0.02)
    async with httpx.AsyncClient(timeout=10) as anonymous:
        # The agent is connected: a GET tries again, and WhatsApp still refuses.
        r = await anonymous.get(url_for(daemon, gone_row, "video"))
        assert r.status_code == 502 and r.json()["error"]["code"] == "BAD_GATEWAY", r.text


@pytest.mark.parametrize("gateway_config", [{"inbound_max_bytes": 10_000}], indirect=True)
async def test_media_over_the_size_limit_is_marked_not_fetched(daemon: MediaDaemon) -> None:
    """An attachment larger than media.inbound_max_bytes is recorded as too large; GET is 413."""
    await connect(daemon)
    big = daemon.sim.inject_media(AGENT, "document", CUSTOMER, size=10_001, filename="big.pdf")
    row_id, media = await settled(daemon, big.id)
    assert media["download_error"].startswith("too large: 10001 bytes")
    assert not media_file(daemon.inbound, row_id).exists()
    async with httpx.AsyncClient(timeout=10) as anonymous:
        r = await anonymous.get(url_for(daemon, row_id, "document"))
        assert r.status_code == 413 and r.json()["error"]["code"] == "MEDIA_TOO_LARGE"


async def test_a_stalled_download_does_not_hold_the_forwarder(daemon: MediaDaemon) -> None:
    """While a download hangs in WhatsApp, later messages are still stored and handled."""
    await connect(daemon)
    daemon.sim.stall(AGENT)
    try:
        stuck = daemon.sim.inject_media(AGENT, "audio", CUSTOMER, size=3000)
        with trio.fail_after(10):
            while daemon.sim.stalled_calls(AGENT) == 0:
                await trio.sleep(0.01)
        later = daemon.sim.inject_text(AGENT, CUSTOMER, "still here")
        with trio.fail_after(10):
            while (await row_of(daemon, later.id))[3] is None:
                await trio.sleep(0.02)
        assert (await row_of(daemon, stuck.id))[2] == {
            "mimetype": "audio/ogg; codecs=opus", "size": 3000, "caption": None,
            "filename": None, "seconds": None, "ptt": False,
        }  # fmt: skip
    finally:
        daemon.sim.unstall(AGENT)
    _, media = await settled(daemon, stuck.id)
    assert media["stored"]["bytes"] == 3000


async def test_a_removed_file_is_fetched_again_on_demand_only_while_connected(
    daemon: MediaDaemon,
) -> None:
    """After the retention removed a file, GET downloads it again if the agent is connected."""
    await connect(daemon)
    message = daemon.sim.inject_media(AGENT, "image", CUSTOMER, size=5000)
    row_id, _ = await settled(daemon, message.id)
    path = media_file(daemon.inbound, row_id)
    kept = path.read_bytes()
    path.unlink()
    url = url_for(daemon, row_id)
    async with httpx.AsyncClient(timeout=10) as anonymous:
        r = await anonymous.get(url)
        assert r.status_code == 200 and r.content == kept
        path.unlink()
        daemon.sim.drop(AGENT, back_after=3600)
        r = await anonymous.get(url)
        assert r.status_code == 409 and r.json()["error"]["code"] == "SESSION_NOT_READY", r.text


async def test_retention_removes_old_media_only(tmp_path: Path) -> None:
    """Kept files past the retention and stale partial files go; fresh and foreign ones stay."""
    now = time.time()
    write_media(tmp_path, 1, b"old")
    write_media(tmp_path, 2, b"fresh")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / ".3.abcd.part").write_bytes(b"half")
    for name in ("1", "notes.txt", ".3.abcd.part"):
        os.utime(tmp_path / name, (now - 8 * 86400, now - 8 * 86400))
    removed = delete_old_media(tmp_path, older_than=7 * 86400, now=now)
    assert sorted(removed) == [".3.abcd.part", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "notes.txt"]


async def test_the_cleanup_timer_applies_the_retention_on_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """run_cleanup deletes received media older than inbound_retention at its next round."""
    # Jump only after the round's worker thread (real time) has had a moment to finish.
    autojump_clock.autojump_threshold = 0.2
    config = Config.from_mapping(
        {
            "media": {
                "temp_dir": str(tmp_path / "previews"),
                "inbound_dir": str(tmp_path / "inbound"),
                "inbound_retention": 3600.0,
                "cleanup_interval": 600.0,
            }
        }
    )
    inbound = tmp_path / "inbound"
    write_media(inbound, 10, b"a")
    write_media(inbound, 11, b"b")
    start = time.time()
    os.utime(inbound / "10", (start - 4000, start - 4000))
    os.utime(inbound / "11", (start - 3000, start - 3000))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_cleanup(
                lambda: config, now=lambda: start + trio.current_time(), task_status=task_status
            )
        )
        await trio.sleep(599)
        assert (inbound / "10").exists()  # no round yet
        await trio.sleep(2)
        assert not (inbound / "10").exists() and (inbound / "11").exists()
        await trio.sleep(600)  # 11 is now 4200 s old
        assert not (inbound / "11").exists()
        nursery.cancel_scope.cancel()


def test_neonize_keeps_a_trimmed_download_reference() -> None:
    """neonize's media sub-message is kept (keys, path) without thumbnail or context."""
    from gatewayd.whatsapp.neonize.env import import_neonize

    import_neonize()
    from neonize.events import MessageEv
    from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo, ImageMessage, Message

    from gatewayd.whatsapp.neonize.media import message_of_ref
    from gatewayd.whatsapp.neonize.translate import translate_message

    alice = JID(User="628222000222", Server="s.whatsapp.net", IsEmpty=False)
    image = ImageMessage(
        mimetype="image/jpeg", fileLength=1234, caption="look", mediaKey=b"k" * 32,
        directPath="/v/t62.7118-24/abc", fileEncSHA256=b"e" * 32, fileSHA256=b"s" * 32,
        JPEGThumbnail=b"t" * 5000, contextInfo=ContextInfo(stanzaID="Q1"),
    )  # fmt: skip
    source = MessageSource(Chat=alice, Sender=alice)
    info = MessageInfo(MessageSource=source, ID="3EB0MEDIA", Timestamp=1_789_015_800_000)
    msg = translate_message(MessageEv(Info=info, Message=Message(imageMessage=image)))
    assert msg.media is not None and msg.media.ref is not None
    kept = message_of_ref(msg.media.ref)
    assert kept.imageMessage.mediaKey == b"k" * 32
    assert kept.imageMessage.directPath == "/v/t62.7118-24/abc"
    assert kept.imageMessage.fileEncSHA256 == b"e" * 32
    assert not kept.imageMessage.JPEGThumbnail and not kept.imageMessage.HasField("contextInfo")
    assert len(base64.b64decode(msg.media.ref)) < 300


async def test_neonize_download_refuses_a_bad_reference_or_no_session() -> None:
    """The neonize client's download fails cleanly: bad reference, or no connected session."""
    from gatewayd.whatsapp.neonize.client import NeonizeClient
    from gatewayd.whatsapp.port import Media

    client = NeonizeClient(None, "a1")  # type: ignore[arg-type]  # the backend is not reached
    for ref in (None, "", "not base64!", base64.b64encode(b"\xff\xff\xff").decode()):
        with pytest.raises(WhatsAppError):
            await client.download_media(Media(mimetype="image/jpeg", size=1, ref=ref))
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ImageMessage, Message

    good = base64.b64encode(
        Message(imageMessage=ImageMessage(mediaKey=b"k")).SerializeToString()
    ).decode()
    with pytest.raises(NotConnected):
        await client.download_media(Media(mimetype="image/jpeg", size=1, ref=good))


def test_secrets_sign_links_independently() -> None:
    """Another auth secret yields another link signature, so rotating it voids old links."""
    one = AuthSecrets.from_secret(b"1" * 32)
    two = AuthSecrets.from_secret(b"2" * 32)
    assert links.signature(one, 5, 100) != links.signature(two, 5, 100)
    links.check_link(one, 5, 100, links.signature(one, 5, 100), now=99.0)
