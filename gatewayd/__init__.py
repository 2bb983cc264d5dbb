"""gatewayd: a self-hosted, multi-tenant WhatsApp gateway daemon."""

__version__ = "0.1.0"
