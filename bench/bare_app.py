"""The ceiling ``bench/http_routes.py`` measures gatewayd against: one Starlette route, ``GET /ping``,
on hypercorn's trio worker configured as gatewayd configures it (gatewayd/http/app.py
``hypercorn_config``: no access log, no Server header), in a process of its own.

    .venv/bin/python bench/bare_app.py --port 8999

Prints ``listening <url>`` once it accepts connections, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def ping(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/ping", ping, methods=["GET"])])


async def main(host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.include_server_header = False
    config.graceful_timeout = 1.0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def stopped() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app,  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=stopped,
                    task_status=task_status,
                )
            )
            print(f"listening {binds[0]}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
