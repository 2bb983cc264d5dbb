"""Request bodies of the agents API, parsed into the use cases' typed inputs.

``read_json`` (``gatewayd.http.app``) has already checked the JSON as a whole; here each field
is checked for what it must be, and an ``InvalidPayload`` names the field that is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from gatewayd.errors import InvalidPayload
from gatewayd.jid import normalize_recipient
from gatewayd.outbound.ai import RunRequest
from gatewayd.outbound.media import decode_base64_media
from gatewayd.usecases.messaging import MediaMessage, TextMessage
from gatewayd.usecases.sessions import CreateSession

T = TypeVar("T")

AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def agent_id(value: Any, key: str = "agentId") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not AGENT_ID.fullmatch(value):
        raise InvalidPayload(
            f"'{key}' must be 1-128 characters of letters, digits, '_', '-', '.', ':' or '@'"
        )
    return value


def text(
    body: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 65536
) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidPayload(f"'{key}' must be a non-empty string")
    if len(value) > limit:
        raise InvalidPayload(f"'{key}' is longer than {limit} characters")
    return value


def required_text(body: Mapping[str, Any], key: str, *, limit: int = 65536) -> str:
    value = text(body, key, limit=limit)
    assert value is not None
    return value


def recipient(body: Mapping[str, Any], key: str = "to") -> str:
    """A recipient as written (a number or a JID); its normal form is the use case's."""
    value = body.get(key)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidPayload(f"'{key}' must be a phone number or a JID")
    return str(value)


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 visible ASCII characters, or absent."""
    if value is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(value) is None:
        raise InvalidPayload("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return value


#: A WhatsApp message id, or whatsapp-web.js's serialized ``true_628…@c.us_ID`` form of one.
_QUOTE_ID = re.compile(r"(?:(?:true|false)_[^_\s]+@[a-z.]+_)?[A-Za-z0-9]{4,64}(?:_\S*)?")


def quote_id(body: Mapping[str, Any], key: str) -> str | None:
    """The id of a message to quote, or None; InvalidPayload naming ``key`` when it cannot be one."""
    value = text(body, key, required=False, limit=256)
    if not value:
        return None
    if not _QUOTE_ID.fullmatch(value):
        raise InvalidPayload(f"'{key}' is not a WhatsApp message id", details={"field": key})
    return value


def create_session(body: Mapping[str, Any]) -> CreateSession:
    """``POST /sessions``: ``{userId, agentId, agentName?, apikey?}``."""
    user_id = body.get("userId")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 128:
        raise InvalidPayload("'userId' must be a non-empty string or number")
    agent = agent_id(body.get("agentId"))
    name = body.get("agentName", agent)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidPayload("'agentName' must be a non-empty string")
    apikey = body.get("apikey", body.get("apiKey"))
    if apikey is not None and (not isinstance(apikey, str) or not apikey.strip()):
        raise InvalidPayload("'apikey' must be a non-empty string")
    return CreateSession(user_id=user_id, agent_id=agent, agent_name=name, apikey=apikey)


def text_message(body: Mapping[str, Any]) -> TextMessage:
    """``POST /agents/{agentId}/messages``: ``{to, message, quoteId?}``."""
    return TextMessage(
        to=recipient(body),
        text=required_text(body, "message"),
        quote_id=quote_id(body, "quoteId"),
    )


def media_message(body: Mapping[str, Any], *, max_bytes: int) -> MediaMessage:
    """``POST /agents/{agentId}/media``: ``{to, data | url, caption?, mimetype?, filename?,
    save_to_temp?}`` (images only)."""
    to = recipient(body)
    caption = text(body, "caption", required=False)
    filename = text(body, "filename", required=False, limit=255)
    claimed = body.get("mimetype", body.get("mimeType"))
    if claimed is not None and not isinstance(claimed, str):
        raise InvalidPayload("'mimetype' must be a string")
    save = body.get("save_to_temp", body.get("saveToTemp", True))
    if not isinstance(save, bool):
        raise InvalidPayload("'save_to_temp' must be true or false")
    data, url = body.get("data"), body.get("url")
    if (data is None) == (url is None):
        raise InvalidPayload("Give exactly one of 'data' (base64) or 'url'")
    if data is not None and not isinstance(data, str):
        raise InvalidPayload("'data' must be a base64 string")
    if url is not None and not isinstance(url, str):
        raise InvalidPayload("'url' must be a string")
    return MediaMessage(
        to=to,
        kind="image",
        data=decode_base64_media(data, max_bytes=max_bytes) if data is not None else None,
        url=url,
        caption=caption,
        filename=filename,
        claimed_mimetype=claimed,
        save_preview=save,
    )


def parse_run_request(body: object, *, default_country_code: str = "62") -> RunRequest:
    """Validate a /run body: the ``{message, sessionId, …}`` form or the ``{input, parameters, session_id}`` form
    (docs/contract/agents-api.md §14.2). Where both spellings are present, the first form's wins.
    Unknown keys are ignored. Raises InvalidPayload (InvalidRecipient for the session)."""
    if not isinstance(body, dict):
        raise InvalidPayload("body must be a JSON object")
    key = "message" if "message" in body else "input" if "input" in body else None
    if key is None:
        raise InvalidPayload("message is required (or input)")
    message = body[key]
    if not isinstance(message, str):
        raise InvalidPayload(f"{key} must be a string, not {_json_type(message)}")
    if not message.strip():
        raise InvalidPayload(f"{key} must not be empty")

    session_key = "sessionId" if "sessionId" in body else "session_id"
    session = body.get(session_key)
    session_jid: str | None = None
    if session is not None:
        if isinstance(session, int) and not isinstance(session, bool):
            session = str(session)  # a bare number sent as a JSON number
        if not isinstance(session, str):
            raise InvalidPayload(f"{session_key} must be a string, not {_json_type(session)}")
        session_jid = normalize_recipient(session, default_country_code=default_country_code)

    context_memory = body.get("context_memory")
    if context_memory is not None and (
        isinstance(context_memory, bool) or not isinstance(context_memory, str | int)
    ):
        raise InvalidPayload(
            f"context_memory must be a string or a number, not {_json_type(context_memory)}"
        )
    return RunRequest(
        message=message,
        session_jid=session_jid,
        openai_api_key=_optional(body, "openai_api_key", str),
        memory_enable=_optional(body, "memory_enable", bool),
        context_memory=context_memory,
        rag_enable=_optional(body, "rag_enable", bool),
        metadata=_optional(body, "metadata", dict),
        parameters=_optional(body, "parameters", dict),
    )


def _optional(body: Mapping[str, Any], key: str, kind: type[T]) -> T | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise InvalidPayload(f"{key} must be {_TYPE_NAMES[kind]}, not {_json_type(value)}")
    return value


_TYPE_NAMES: dict[type, str] = {str: "a string", bool: "true or false", dict: "an object"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
