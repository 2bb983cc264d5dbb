"""The WhatsApp port and its implementations.

``port`` holds the project's own types and Protocols; ``sim`` is the in-memory network used by
tests, the demo and benchmarks; ``qr`` renders and tracks pairing QR codes. The neonize adapter
will live beside them and is imported only in neonize mode (neonize needs libmagic at import).
"""

from gatewayd.whatsapp.port import (
    CONNECTION_END_TYPES,
    STATUS_BROADCAST,
    ClientEvent,
    ClientOutdated,
    Connected,
    ConnectFailed,
    ConnectionEnd,
    Disconnected,
    Event,
    InboundMessage,
    LoggedOut,
    Media,
    MediaType,
    MessageReceived,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
    Quote,
    Receipt,
    SendResult,
    StreamReplaced,
    TemporaryBan,
    WhatsAppBackend,
    WhatsAppClient,
)

__all__ = [
    "CONNECTION_END_TYPES",
    "STATUS_BROADCAST",
    "ClientEvent",
    "ClientOutdated",
    "ConnectFailed",
    "Connected",
    "ConnectionEnd",
    "Disconnected",
    "Event",
    "InboundMessage",
    "LoggedOut",
    "Media",
    "MediaType",
    "MessageReceived",
    "Paired",
    "PairingError",
    "PairingFailed",
    "QrCode",
    "Quote",
    "Receipt",
    "SendResult",
    "StreamReplaced",
    "TemporaryBan",
    "WhatsAppBackend",
    "WhatsAppClient",
]
