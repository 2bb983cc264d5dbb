"""Log lines: JSON with timestamp, level, event and bound context; live level changes."""

from __future__ import annotations

import io
import json
import logging

import structlog

from gatewayd.log import configure_logging, set_level


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_context_and_respect_the_live_level() -> None:
    """Each line is JSON with timestamp, level, event, traceId/agentId; the level changes live."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(traceId="t-1", agentId="bot"):
        log.info("gatewayd.test.event", n=1)
        log.debug("gatewayd.test.hidden")
    set_level("debug")
    log.debug("gatewayd.test.shown")
    set_level("warning")
    log.info("gatewayd.test.dropped")
    logging.getLogger("psycopg.pool").warning("pool trouble")
    out = lines(stream)
    assert [e["event"] for e in out] == [
        "gatewayd.test.event",
        "gatewayd.test.shown",
        "pool trouble",
    ]
    first = out[0]
    assert first["traceId"] == "t-1" and first["agentId"] == "bot" and first["level"] == "info"
    assert str(first["timestamp"]).endswith("Z")
    assert out[2]["level"] == "warning"
    configure_logging("info", "json")


def test_console_renderer_when_configured() -> None:
    """log.format = console gives readable, non-JSON lines."""
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    structlog.get_logger().info("gatewayd.test.console", key="value")
    text = stream.getvalue()
    assert "gatewayd.test.console" in text and "key" in text
    assert not text.lstrip().startswith("{")
    configure_logging("info", "json")


def test_stdlib_records_carry_logger_name_and_level() -> None:
    """A stdlib logging record (neonize, hypercorn) is a JSON line naming its logger and level."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("neonize.utils.ffmpeg").warning("neonize: %s not found", "ffmpeg")
    logging.getLogger("whatsmeow.Client").info("below the third-party floor")
    (line,) = lines(stream)
    assert line["event"] == "neonize: ffmpeg not found"
    assert line["logger"] == "neonize.utils.ffmpeg" and line["level"] == "warning"
    configure_logging("info", "json")


def test_deployed_service_level_names_set_the_level() -> None:
    """warn, fatal and trace (the deployed service's names) filter like warning, critical, debug."""
    stream = io.StringIO()
    configure_logging("warn", "json", stream)
    log = structlog.get_logger()
    log.info("gatewayd.test.info_dropped")
    log.warning("gatewayd.test.warning_kept")
    set_level("FATAL")
    log.error("gatewayd.test.error_dropped")
    log.critical("gatewayd.test.critical_kept")
    set_level("trace")
    log.debug("gatewayd.test.debug_kept")
    logging.getLogger("whatsmeow.Client").debug("third-party debug kept")
    assert [e["event"] for e in lines(stream)] == [
        "gatewayd.test.warning_kept",
        "gatewayd.test.critical_kept",
        "gatewayd.test.debug_kept",
        "third-party debug kept",
    ]
    configure_logging("info", "json")
