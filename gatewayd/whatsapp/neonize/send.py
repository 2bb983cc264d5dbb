"""Building the protobuf messages the neonize client sends.

We build every ``waE2E.Message`` ourselves rather than use neonize's ``send_image`` /
``send_audio`` / ``send_video`` helpers: those scan the text for ``@<digits>`` mentions (and
make a network call per ``@…@g.us``), shell out to ffmpeg/ffprobe for audio and video (a
``FileNotFoundError`` when it is not installed) and sniff the mimetype with libmagic. Here the
caller's mentions and mimetype are used as given, media is uploaded with ``client.upload`` and
described by hand; ffprobe is only asked for a duration when it is installed.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Literal

from gatewayd.jid import is_group
from gatewayd.whatsapp.port import Quote, SendResult

SendKind = Literal["image", "document", "audio", "video"]

_THUMBNAIL_SIZE = (72, 72)
_FFPROBE_TIMEOUT = 10.0


def context_info(quote: Quote | None, mentions: Sequence[str]) -> Any | None:
    """The ``ContextInfo`` quoting ``quote`` and mentioning ``mentions``; None when neither."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo, Message

    if quote is None and not mentions:
        return None
    ctx = ContextInfo(mentionedJID=list(mentions))
    if quote is not None:
        ctx.stanzaID = quote.message_id
        ctx.participant = quote.sender
        ctx.quotedMessage.CopyFrom(Message(conversation=quote.text or ""))
        if quote.chat and quote.chat != quote.sender and not is_group(quote.chat):
            ctx.remoteJID = quote.chat
    return ctx


def text_message(text: str, *, quote: Quote | None = None, mentions: Sequence[str] = ()) -> Any:
    """A plain ``conversation``, or an ``extendedTextMessage`` when quoting or mentioning."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ExtendedTextMessage, Message

    ctx = context_info(quote, mentions)
    if ctx is None:
        return Message(conversation=text)
    return Message(extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=ctx))


def upload_media_type(kind: SendKind) -> Any:
    """neonize's ``MediaType`` for an upload of ``kind``."""
    from neonize.utils.enum import MediaType

    return {
        "image": MediaType.MediaImage,
        "document": MediaType.MediaDocument,
        "audio": MediaType.MediaAudio,
        "video": MediaType.MediaVideo,
    }[kind]


def media_message(
    kind: SendKind,
    upload: Any,
    *,
    mimetype: str,
    caption: str | None = None,
    filename: str | None = None,
    ptt: bool = False,
    seconds: int | None = None,
    thumbnail: bytes | None = None,
    quote: Quote | None = None,
) -> Any:
    """The message describing an uploaded attachment (``upload`` is neonize's UploadResponse)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    common: dict[str, Any] = {
        "URL": upload.url,
        "directPath": upload.DirectPath,
        "mediaKey": upload.MediaKey,
        "fileEncSHA256": upload.FileEncSHA256,
        "fileSHA256": upload.FileSHA256,
        "fileLength": upload.FileLength,
        "mimetype": mimetype,
    }
    ctx = context_info(quote, ())
    if ctx is not None:
        common["contextInfo"] = ctx
    if kind == "image":
        sub = e2e.ImageMessage(**common, caption=caption, JPEGThumbnail=thumbnail)
        return e2e.Message(imageMessage=sub)
    if kind == "document":
        sub = e2e.DocumentMessage(**common, caption=caption, fileName=filename, title=filename)
        return e2e.Message(documentMessage=sub)
    if kind == "audio":
        return e2e.Message(audioMessage=e2e.AudioMessage(**common, PTT=ptt, seconds=seconds))
    sub = e2e.VideoMessage(**common, caption=caption, seconds=seconds, JPEGThumbnail=thumbnail)
    return e2e.Message(videoMessage=sub)


def send_result(response: Any) -> SendResult:
    """neonize's ``SendResponse`` (timestamp in seconds) → ``SendResult`` (milliseconds)."""
    seconds = int(response.Timestamp)
    return SendResult(str(response.ID), seconds * 1000 if seconds < 100_000_000_000 else seconds)


def image_thumbnail(data: bytes) -> bytes | None:
    """A small JPEG preview of an image, or None when Pillow cannot read it."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail(_THUMBNAIL_SIZE)
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=60)
            return out.getvalue()
    except Exception:  # any unreadable image just goes without a preview
        return None


def media_seconds(data: bytes) -> int | None:
    """The duration of audio/video in whole seconds via ffprobe, or None (ffprobe missing, …)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        done = subprocess.run(
            [ffprobe, "-v", "quiet", "-print_format", "json", "-show_format", "-"],
            input=data,
            capture_output=True,
            timeout=_FFPROBE_TIMEOUT,
            check=False,
        )
        return int(float(json.loads(done.stdout)["format"]["duration"]))
    except Exception:  # no duration is fine: WhatsApp shows the clip without one
        return None
