"""One log stream: Go's prints and stdlib logging records become JSON lines on stdout.

The children below import the real neonize library. An offline ``send_message`` on a client
that never connected makes Go ``fmt.Println`` its error to descriptor 1, and neonize's
``check_ffmpeg_available`` logs its warning through stdlib logging (ffmpeg is not installed
here; the child also empties PATH to be sure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GO_SEND_ERROR = "SendMessage: Error sending message: client is nil"


def _run_child(tmp_path: Path, *mode: str) -> tuple[list[str], str]:
    env = {**os.environ, "NEONIZE_BOT_TAG": "off", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_log_stream", str(tmp_path / "store.db"), *mode],
        cwd=ROOT, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode().splitlines(), done.stderr.decode(errors="replace")


def _parse_all(lines: list[str]) -> list[dict[str, Any]]:
    bare = []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            bare.append(line)
    assert bare == [], f"bare text on stdout: {bare[:5]}"
    return parsed


def test_go_prints_and_stdlib_records_are_json_lines(tmp_path: Path) -> None:
    """Go's stdout print, neonize's logging warning, print() and raw writes become JSON lines."""
    lines, _ = _run_child(tmp_path, "once")
    events = _parse_all(lines)
    go = [e for e in events if e["event"] == "gatewayd.whatsapp.go_output"]
    assert [e["text"] for e in go] == [
        GO_SEND_ERROR,
        "a stray print",
        "raw",
        "no newline at the end",
    ]
    assert all(e["level"] == "warning" and "timestamp" in e for e in go)
    ffmpeg = [e for e in events if e.get("logger") == "neonize.utils.ffmpeg"]
    assert len(ffmpeg) == 1 and ffmpeg[0]["level"] == "warning"
    assert "ffmpeg" in ffmpeg[0]["event"] and "not found on PATH" in ffmpeg[0]["event"]
    names = [e["event"] for e in events]
    # Our own lines keep their order around the captured ones.
    assert names[0] == "child.before" and names[-1] == "child.after"


def test_concurrent_go_prints_and_logs_never_share_a_line(tmp_path: Path) -> None:
    """Go printing from four threads while four threads log: every stdout line is whole JSON."""
    lines, _ = _run_child(tmp_path, "threads")
    events = _parse_all(lines)
    go = [e for e in events if e["event"] == "gatewayd.whatsapp.go_output"]
    assert len(go) == 4 * 100 and {e["text"] for e in go} == {GO_SEND_ERROR}
    assert len([e for e in events if e["event"] == "child.structlog"]) == 4 * 100
    assert len([e for e in events if e["event"] == "stdlib record"]) == 4 * 100


def _child(db_path: str, mode: str) -> None:
    import logging

    import structlog

    from gatewayd.log import capture_stdout, configure_logging
    from gatewayd.whatsapp.neonize.env import configure_neonize_logging, import_neonize

    configure_logging("info", "json")
    capture = capture_stdout()
    log = structlog.get_logger()
    log.info("child.before")
    client_module = import_neonize()
    configure_neonize_logging("warning")
    from neonize.exc import SendMessageError
    from neonize.utils import build_jid
    from neonize.utils.ffmpeg import check_ffmpeg_available

    nc = client_module.NewClient(db_path, uuid="never-connected")
    nc._stop_finalizer.detach()
    to = build_jid("628123456789")

    def send() -> None:
        try:
            nc.send_message(to, "hi")
        except SendMessageError:
            pass  # "client is nil": Go printed its error first

    if mode == "once":
        send()
        check_ffmpeg_available()
        print("a stray print")
        os.write(1, b"raw\r\nno newline at the end")
    else:

        def go_printer() -> None:
            for _ in range(100):
                send()

        def logger(n: int) -> None:
            for i in range(100):
                log.info("child.structlog", n=n, i=i, pad="x" * 200)
                logging.getLogger("child").warning("stdlib record")

        threads = [threading.Thread(target=go_printer) for _ in range(4)]
        threads += [threading.Thread(target=logger, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    capture.close()
    log.info("child.after")


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
