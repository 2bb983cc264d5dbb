"""Downloading received attachments with neonize: the reference kept with the message, and
turning it back into what ``download_any`` takes.

whatsmeow needs the media sub-message itself to download an attachment (its direct path, media
key and hashes), and the daemon downloads after the event callback has returned — possibly
after a restart. So the translation keeps a trimmed copy of the sub-message, serialized and
base64'd, as ``Media.ref`` (stored with the message): a ``waE2E.Message`` holding only that
field, without its inline JPEG thumbnail and its ``contextInfo`` (neither is needed to
download, and both can be large). docs/neonize.md, "Downloading received media".
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from gatewayd.errors import WhatsAppError

#: Fields of a media sub-message that a download does not need.
_DROPPED = (
    "JPEGThumbnail",
    "pngThumbnail",
    "contextInfo",
    "thumbnailDirectPath",
    "thumbnailSHA256",
    "thumbnailEncSHA256",
)


def media_ref(field: str, sub: Any) -> str:
    """The reference of the attachment in ``sub`` (the ``field`` of a ``waE2E.Message``)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    message = Message()
    part = getattr(message, field)
    part.CopyFrom(sub)
    has = part.DESCRIPTOR.fields_by_name
    for name in _DROPPED:
        if name in has:
            part.ClearField(name)
    return base64.b64encode(message.SerializeToString()).decode("ascii")


def message_of_ref(ref: str | None) -> Any:
    """The ``waE2E.Message`` to hand to ``download_any``; ``WhatsAppError`` for a bad ref."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    if not ref:
        raise WhatsAppError("media has no download reference")
    try:
        return Message.FromString(base64.b64decode(ref.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError, DecodeError):
        raise WhatsAppError("media download reference is not readable") from None
