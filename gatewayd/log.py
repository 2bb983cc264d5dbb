"""structlog setup: JSON lines on stdout, a console renderer on a TTY; one stream for all.

Context (``traceId`` from the request, ``agentId`` in an agent's task tree) is bound
with ``structlog.contextvars`` and merged into every line. The level can change
while running (SIGHUP), so filtering is a processor reading a module-level value
rather than a bound-logger class fixed at configure time. Records from the standard
library's logging (hypercorn, psycopg, neonize) go through the same processors and carry
their logger's name.

``capture_stdout`` (neonize mode) keeps the log a stream of JSON lines although neonize's Go
side prints to descriptor 1 directly (docs/neonize.md, "One log stream"): descriptor 1 becomes
a pipe whose lines are logged as events, and the log itself is written to a duplicate of the
real stdout. stderr is left alone: a Go abort writes its trace there, and a reader thread in
the dying process could not save it.
"""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
#: The deployed service's level names (pino's) → ours. Nothing here logs below debug, so
#: ``trace`` is debug: everything, third-party libraries included.
LEVEL_ALIASES = {"trace": "debug", "warn": "warning", "fatal": "critical"}
_NUMERIC = {**_LEVELS, **{alias: _LEVELS[name] for alias, name in LEVEL_ALIASES.items()}}
_current_level = _LEVELS["info"]
_current_level_name = "info"
_current_format = "auto"
_real_stdout: TextIO | None = None  # set by capture_stdout: where the log goes from then on

GO_OUTPUT_EVENT = "gatewayd.whatsapp.go_output"
"""The event of a line something printed to descriptor 1 (neonize's Go side) instead of logging."""

_PARTIAL_LINE_WAIT = 0.5  # a line without its newline is logged after this long
_MAX_LINE = 16384  # longer lines are logged in pieces


def canonical_level(name: str) -> str:
    """Our name for a level name as configured: any case, the deployed service's names too.

    Raises ValueError naming the accepted names for anything else.
    """
    lowered = name.strip().lower()
    lowered = LEVEL_ALIASES.get(lowered, lowered)
    if lowered not in _LEVELS:
        raise ValueError(
            f"expected one of {', '.join(_LEVELS)} (or {', '.join(LEVEL_ALIASES)}), got {name!r}"
        )
    return lowered


def _filter_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    level = _NUMERIC.get(method_name, _NUMERIC.get(str(event_dict.get("level", "")), 20))
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


class _LineStream:
    """One stream, one lock: each line is written whole, never interleaved with another.

    structlog's and logging's writers each lock only themselves; both write through this.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            written = self._stream.write(text)
            self._stream.flush()
            return written

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging through it. Safe to call again.

    Without ``stream`` the log goes to stdout: the real one, also after ``capture_stdout``.
    """
    global _current_level, _current_level_name, _current_format
    level = canonical_level(level)
    _current_level = _LEVELS[level]
    _current_level_name, _current_format = level, fmt
    stream = stream or _real_stdout or sys.stdout
    renderer = _renderer(fmt, stream)
    lines: Any = _LineStream(stream)
    structlog.configure(
        processors=[
            _filter_level,
            *_shared_processors(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(lines),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(lines)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.ExtraAdder(),
                structlog.stdlib.add_logger_name,
                *_shared_processors(),
            ],
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
    """Change the level of every logger, live (any name ``canonical_level`` accepts)."""
    global _current_level, _current_level_name
    level = canonical_level(level)
    _current_level = _LEVELS[level]
    _current_level_name = level
    root = logging.getLogger()
    root.setLevel(max(_current_level, logging.WARNING) if level != "debug" else logging.DEBUG)


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)


class StdoutCapture:
    """Descriptor 1 is a pipe read by a thread that logs each line; ``close`` undoes it."""

    def __init__(self, real: TextIO, read_fd: int, event: str) -> None:
        self._real = real
        self._read_fd = read_fd
        self._event = event
        self._thread = threading.Thread(target=self._pump, name="stdout-capture", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _log(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            structlog.get_logger().warning(self._event, text=text)

    def _pump(self) -> None:
        """Read until every writer of the pipe has closed it; never raise."""
        pending = b""
        with open(self._read_fd, "rb", buffering=0) as pipe:
            while True:
                try:
                    ready, _, _ = select.select([pipe], [], [], _PARTIAL_LINE_WAIT)
                    if not ready:
                        if pending:  # Go's fmt.Print without a newline: log it anyway
                            self._log(pending)
                            pending = b""
                        continue
                    chunk = pipe.read(65536)
                    if not chunk:
                        break
                    *complete, pending = (pending + chunk).split(b"\n")
                    for line in complete:
                        self._log(line)
                    while len(pending) > _MAX_LINE:
                        self._log(pending[:_MAX_LINE])
                        pending = pending[_MAX_LINE:]
                except Exception:  # a failed log line must not stop the pipe from draining
                    pending = b""
        if pending:
            self._log(pending)

    def close(self, timeout: float = 2.0) -> None:
        """Put the real stdout back on descriptor 1; log what was still in the pipe (bounded).

        A child process that inherited descriptor 1 keeps the pipe open until it exits; the
        wait for the reader is bounded for that reason.
        """
        if self._closed:
            return
        self._closed = True
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._real.fileno(), 1)  # closes this process's write end of the pipe
        self._thread.join(timeout)


def capture_stdout(event: str = GO_OUTPUT_EVENT) -> StdoutCapture:
    """Make descriptor 1 a pipe whose lines become ``event`` log lines (level warning).

    The log (structlog, stdlib logging) moves to a duplicate of the real stdout, and Python
    warnings, uncaught thread exceptions and exceptions ignored in callbacks (ctypes) become
    log lines too. Call once, after ``configure_logging``; later ``configure_logging`` calls
    keep writing to the real stdout. Only whole lines are ever interleaved.
    """
    global _real_stdout
    if _real_stdout is not None:
        raise RuntimeError("stdout is already captured")
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.close(write_fd)
    _real_stdout = real
    configure_logging(_current_level_name, _current_format, real)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # a print() reaches the pipe at once
    _route_python_side_channels()
    capture = StdoutCapture(real, read_fd, event)
    capture.start()
    return capture


def _route_python_side_channels() -> None:
    """Warnings, uncaught thread exceptions and unraisable exceptions as log lines."""
    logging.captureWarnings(True)
    log = structlog.get_logger()

    def unraisable(info: Any) -> None:
        exc = info.exc_value
        log.error(
            "gatewayd.unraisable",
            message=info.err_msg or "Exception ignored",
            object=repr(info.object)[:200],
            exc_info=(type(exc), exc, info.exc_traceback) if exc is not None else None,
        )

    def thread_exception(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | None = (
            (args.exc_type, args.exc_value, args.exc_traceback)
            if args.exc_value is not None
            else None
        )
        name = args.thread.name if args.thread is not None else None
        log.error("gatewayd.thread_exception", thread=name, exc_info=exc_info)

    sys.unraisablehook = unraisable
    threading.excepthook = thread_exception
