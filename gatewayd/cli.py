"""``gatewayd run | check-config | migrate | backup | restore | simnet | qr``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import trio

from gatewayd.config import Config, check_sim_url
from gatewayd.config_changes import effective
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.log import capture_stdout, configure_logging

DEFAULT_CONFIG = Path("gatewayd.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd", description="Multi-tenant WhatsApp gateway daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config", type=Path, help="TOML config (default: ./gatewayd.toml if present)"
    )
    run.add_argument(
        "--whatsapp",
        type=_whatsapp_mode,
        metavar="{neonize,sim,sim=URL}",
        help="override whatsapp.mode; sim=URL uses the `gatewayd simnet` at URL",
    )

    check = sub.add_parser(
        "check-config", help="validate a config file and print the effective config"
    )
    check.add_argument("path", type=Path)

    migrate = sub.add_parser("migrate", help="apply or revert database migrations")
    migrate.add_argument("--config", type=Path)
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument(
        "steps", nargs="?", type=int, help="up: target version; down: how many (default 1)"
    )

    backup = sub.add_parser(
        "backup",
        help="write a backup of the database (device keys included: mode 0600) to FILE",
        description="Dump everything gatewayd keeps (its tables, whatsmeow's device store, "
        "the generated auth secret) to FILE, created mode 0600; works while the daemon runs. "
        "See docs/backup.md.",
    )
    backup.add_argument("file", type=Path, metavar="FILE")
    backup.add_argument("--config", type=Path, help="TOML config (default: ./gatewayd.toml)")
    restore = sub.add_parser(
        "restore",
        help="restore a backup into an empty database or data directory",
        description="Restore FILE (from `gatewayd backup`) into the configured database, which "
        "must be empty (or, for the embedded PostgreSQL, a new data directory), in one "
        "transaction. See docs/backup.md.",
    )
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument("--config", type=Path, help="TOML config (default: ./gatewayd.toml)")

    simnet = sub.add_parser("simnet", help="run the simulated WhatsApp network as its own process")
    simnet.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 4000),
        metavar="HOST:PORT",
        help="address to serve /_sim/ and /_net/ on (port 0: any free port; default 127.0.0.1:4000)",
    )
    simnet.add_argument("--state", type=Path, help="JSON file keeping the network across restarts")
    simnet.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    qr = sub.add_parser("qr", help="print an agent's pairing QR in the terminal (asks the daemon)")
    qr.add_argument("agent_id", metavar="AGENT_ID")
    qr.add_argument("--config", type=Path, help="TOML config (server address and admin token)")
    qr.add_argument("--url", help="the daemon's base URL (default: from server.host/port)")
    qr.add_argument("--payload", action="store_true", help="print the QR's text instead")
    return parser


def _whatsapp_mode(value: str) -> tuple[str, str]:
    """``neonize`` | ``sim`` | ``sim=URL`` → (mode, sim_url)."""
    mode, _, url = value.partition("=")
    if value in ("neonize", "sim") or (mode == "sim" and url):
        return mode, url
    raise argparse.ArgumentTypeError("expected neonize, sim or sim=URL")


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:4000")
    return host.strip("[]"), int(port)


def _load(path: Path | None) -> tuple[Config, Path | None]:
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        return Config.from_mapping({}, os.environ), None
    return Config.from_toml(path, os.environ), path


def _print_errors(errors: Sequence[str]) -> None:
    print("configuration errors:", file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)


def cmd_check_config(path: Path) -> int:
    try:
        config = Config.from_toml(path, os.environ)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return 2
    print(json.dumps(effective(config), indent=2))
    return 0


def _load_or_report(path: Path | None) -> tuple[Config, Path | None] | None:
    try:
        return _load(path)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return None


def _run_trio(main: Callable[[], Awaitable[object]]) -> int:
    """trio.run with the daemon's exit codes: 0 done, 1 a GatewayError, 130 interrupted."""
    try:
        trio.run(main)
    except GatewayError as exc:
        print(f"gatewayd: {exc.message}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            return 130
        errors, rest = group.split(GatewayError)
        if errors is not None and rest is None:
            for leaf in _leaves(errors):
                print(f"gatewayd: {getattr(leaf, 'message', leaf)}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def cmd_run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from gatewayd.daemon import run_gateway

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    config, path = loaded
    if args.whatsapp:
        mode, sim_url = args.whatsapp
        whatsapp = attrs.evolve(config.whatsapp, mode=mode, sim_url=sim_url)
        errors = check_sim_url(whatsapp)
        if errors:
            _print_errors(errors)
            return 2
        config = attrs.evolve(config, whatsapp=whatsapp)
    if config.whatsapp.mode == "sim":
        configure_logging(config.log.level, config.log.format)
        return _run_trio(lambda: run_gateway(config, config_path=path))
    # neonize's Go side reads its environment only at exec time: without
    # NEONIZE_BOT_TAG=off every send would carry the bot badge, so re-exec with it.
    from gatewayd.whatsapp.neonize.env import ensure_bot_tag_env
    from gatewayd.whatsapp.neonize.gate import final_exit

    ensure_bot_tag_env(sys.argv[1:] if argv is None else list(argv))
    configure_logging(config.log.level, config.log.format)
    # Go prints to descriptor 1 directly: turn its lines into log events (gatewayd/log.py).
    capture = capture_stdout()
    try:
        rc = _run_trio(lambda: run_gateway(config, config_path=path))
    finally:
        capture.close()
    # A session stuck in neonize's QR phase never ends its (non-daemon) thread: leave now.
    final_exit(rc)


def cmd_migrate(args: argparse.Namespace) -> int:
    from gatewayd.daemon import open_store
    from gatewayd.store.migrations import (
        describe_status,
        discover_migrations,
        migrate_down,
        migrate_up,
        migration_status,
    )

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    config = loaded[0]
    configure_logging(config.log.level, config.log.format, stream=sys.stderr)
    if args.action == "status":
        return _run_blocking(lambda: _migrate_status(config))

    async def main() -> None:
        async with open_store(config) as db:
            if args.action == "up":
                for m in await migrate_up(db, target=args.steps):
                    print(f"applied {m}")
            elif args.action == "down":
                for m in await migrate_down(db, steps=args.steps or 1):
                    print(f"reverted {m}")
            print("\n".join(describe_status(await migration_status(db), discover_migrations())))

    return _run_trio(main)


def _migrate_status(config: Config) -> None:
    """Read-only: also while the daemon runs on the embedded PostgreSQL (through its server),
    and without creating a data directory that does not exist yet."""
    from gatewayd.backup import connect, embedded_cluster_exists, open_server
    from gatewayd.store.db import map_exceptions
    from gatewayd.store.migrations import (
        MigrationStatus,
        describe_status,
        discover_migrations,
        read_status,
    )

    migrations = discover_migrations()
    if not config.database.url and not embedded_cluster_exists(config):
        print(f"no database yet in {config.database.data_dir} (the embedded PostgreSQL)")
        nothing = [MigrationStatus(m.version, m.name, None) for m in migrations]
        print("\n".join(describe_status(nothing, migrations)))
        return
    with open_server(config, daemon_running="use", create=False) as server:
        with connect(server.dsn) as conn, map_exceptions():
            statuses = read_status(conn, migrations)
    print("\n".join(describe_status(statuses, migrations)))


def _run_blocking(main: Callable[[], object]) -> int:
    """The exit codes of the blocking commands: 0 done, 2 refused (nothing was done), 1 a
    GatewayError on the way, 130 interrupted."""
    from gatewayd.backup import Refused

    try:
        main()
    except Refused as exc:
        print(f"gatewayd: {exc.message}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gatewayd: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _config_logging_to_stderr(path: Path | None) -> Config | None:
    """The config (None: its errors were printed), with the log on stderr: stdout is the
    command's own answer."""
    loaded = _load_or_report(path)
    if loaded is None:
        return None
    config = loaded[0]
    configure_logging(config.log.level, config.log.format, stream=sys.stderr)
    return config


def cmd_backup(args: argparse.Namespace) -> int:
    from gatewayd.backup import take_backup

    config = _config_logging_to_stderr(args.config)
    if config is None:
        return 2

    def main() -> None:
        done = take_backup(config, args.file)
        secret = {
            "kept": "the auth secret",
            "configured": "no auth secret (auth.jwt_secret is configured: keep it too)",
            "none": "no auth secret (none generated yet)",
        }[done.auth_secret]
        print(
            f"backup of {done.where} written to {done.path} ({_size(done.bytes)}): schema "
            f"{done.schema_version:03d}, {_count(done.tables, 'table')}, "
            f"{_count(done.messages, 'message')}, {_count(done.devices, 'WhatsApp device')}, "
            f"{secret}"
        )
        print(
            "it holds the WhatsApp device keys and the API and webhook secrets: keep it "
            "private (mode 0600)"
        )

    return _run_blocking(main)


def cmd_restore(args: argparse.Namespace) -> int:
    from gatewayd.backup import restore_backup

    config = _config_logging_to_stderr(args.config)
    if config is None:
        return 2

    def main() -> None:
        done = restore_backup(config, args.file)
        print(
            f"restored {done.path} (taken {done.created_at}, schema "
            f"{done.schema_version:03d}) into {done.where}: {_count(done.tables, 'table')}, "
            f"every row count as in the backup ({_count(done.messages, 'message')}, "
            f"{_count(done.devices, 'WhatsApp device')})"
        )
        for note in done.notes:
            print(f"note: {note}")
        print(
            "start gatewayd: it applies any newer migrations, and the agents reconnect "
            "without a new QR"
        )

    return _run_blocking(main)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def cmd_simnet(args: argparse.Namespace) -> int:
    from gatewayd.whatsapp.simnet.server import run_simnet

    configure_logging(args.log_level, os.environ.get("GATEWAYD_LOG_FORMAT", "auto"))
    host, port = args.listen
    return _run_trio(lambda: run_simnet(host, port, args.state))


def cmd_qr(args: argparse.Namespace) -> int:
    from gatewayd.cli_qr import print_qr

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    return print_qr(loaded[0], args.agent_id, url=args.url, payload_only=args.payload)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return cmd_check_config(args.path)
    if args.command == "run":
        return cmd_run(args, argv)
    if args.command == "migrate":
        return cmd_migrate(args)
    if args.command == "backup":
        return cmd_backup(args)
    if args.command == "restore":
        return cmd_restore(args)
    if args.command == "simnet":
        return cmd_simnet(args)
    if args.command == "qr":
        return cmd_qr(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
