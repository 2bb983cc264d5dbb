"""structlog setup: JSON lines on stdout, a console renderer on a TTY.

Context (``traceId`` from the request, ``agentId`` in an agent's task tree) is bound
with ``structlog.contextvars`` and merged into every line. The level can change
while running (SIGHUP), so filtering is a processor reading a module-level value
rather than a bound-logger class fixed at configure time. Records from the standard
library's logging (hypercorn, psycopg) go through the same processors.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_current_level = _LEVELS["info"]


def _filter_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    level = _LEVELS.get(method_name, _LEVELS.get(str(event_dict.get("level", "")), 20))
    if method_name == "exception":
        level = _LEVELS["error"]
    if level < _current_level:
        raise structlog.DropEvent
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


def _renderer(fmt: str, stream: TextIO) -> Processor:
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging through it. Safe to call again."""
    global _current_level
    _current_level = _LEVELS[level]
    stream = stream or sys.stdout
    renderer = _renderer(fmt, stream)
    structlog.configure(
        processors=[
            _filter_level,
            *_shared_processors(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries log at WARNING and above unless we are debugging.
    root.setLevel(max(_current_level, logging.WARNING) if level != "debug" else logging.DEBUG)


def set_level(level: str) -> None:
    """Change the level of every logger, live."""
    global _current_level
    _current_level = _LEVELS[level]
    root = logging.getLogger()
    root.setLevel(max(_current_level, logging.WARNING) if level != "debug" else logging.DEBUG)


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)
