"""The container files, checked offline (no engine or registry can be reached here): the
Dockerfile and compose.yaml parse and say what they should, every setting they pass is one the
daemon knows, and the image's entry command with the image's environment runs in this
machine's venv, answering the image's own health check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import yaml

from gatewayd.config import LEGACY_ENV, Config
from tests.browser import SimDaemon
from tests.daemon import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
INSTRUCTIONS = {
    "FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "VOLUME", "EXPOSE",
    "HEALTHCHECK", "ENTRYPOINT", "CMD", "STOPSIGNAL", "LABEL", "SHELL", "ONBUILD",
}  # fmt: skip


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in parsed:
        if keyword == "FROM":
            out.append([])
        out[-1].append((keyword, rest))
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def known_setting(name: str) -> bool:
    """A variable the daemon reads: GATEWAYD_<SECTION>_<KEY> of a real key, a legacy name,
    or one the runtime itself reads (neonize's, Python's)."""
    if name in LEGACY_ENV or name in ("NEONIZE_BOT_TAG", "PYTHONUNBUFFERED"):
        return True
    config = Config.from_toml(ROOT / "gatewayd.toml")
    names = set()
    for section in attrs.fields(type(config)):
        value = getattr(config, section.name)
        if attrs.has(type(value)):
            fields = attrs.fields(type(value))
            names.update(f"GATEWAYD_{section.name}_{key.name}".upper() for key in fields)
    return name in names


# ------------------------------------------------------------------------------ Dockerfile


def test_the_dockerfile_parses_into_named_stages_and_a_non_root_runtime() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    unknown = [k for k, _ in parsed if k not in INSTRUCTIONS]
    assert not unknown, unknown
    built = stages(parsed)
    names = [re.search(r"\bAS\s+(\w+)", s[0][1], re.I) for s in built]
    assert [n.group(1) for n in names[:-1] if n] == ["dashboard", "wheel"]
    for stage in built:
        for keyword, rest in stage:
            source = re.search(r"--from=(\w+)", rest)
            if keyword == "COPY" and source:
                assert source.group(1) in ("dashboard", "wheel")
    runtime = dict(built[-1])
    assert runtime["USER"] not in ("root", "0")
    assert exec_form(runtime["VOLUME"]) == [runtime["WORKDIR"]]
    assert runtime["EXPOSE"] == str(Config.from_toml(ROOT / "gatewayd.toml").server.port)
    assert exec_form(runtime["ENTRYPOINT"]) == ["gatewayd"]
    assert "/health" in runtime["HEALTHCHECK"]


def test_what_the_dockerfile_copies_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _ = rest.split()
        for source in sources:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), source
            assert not any(path == i or path.startswith(i + "/") for i in ignored), source
    # What the build makes must not come from the build context.
    assert "dashboard/node_modules" in ignored and "gatewayd/static" in ignored


def test_every_setting_the_image_and_compose_pass_is_one_the_daemon_reads() -> None:
    runtime_env = env_of(stages(instructions(DOCKERFILE.read_text()))[-1])
    compose = yaml.safe_load(COMPOSE.read_text())
    names = [*runtime_env, *compose["services"]["gatewayd"]["environment"]]
    unknown = [n for n in names if not known_setting(n)]
    assert not unknown, unknown


# ------------------------------------------------------------------------------ compose


def test_compose_runs_gatewayd_beside_postgres_on_loopback_with_volumes() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    gatewayd, postgres = compose["services"]["gatewayd"], compose["services"]["postgres"]
    assert gatewayd["build"] == "."
    assert gatewayd["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert all(p.startswith("127.0.0.1:") for p in gatewayd["ports"])
    url = gatewayd["environment"]["GATEWAYD_DATABASE_URL"]
    assert url.startswith("postgresql://gatewayd:") and url.endswith("@postgres:5432/gatewayd")
    assert postgres["environment"]["POSTGRES_USER"] == "gatewayd"
    assert postgres["environment"]["POSTGRES_DB"] == "gatewayd"
    runtime = dict(stages(instructions(DOCKERFILE.read_text()))[-1])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gatewayd["volumes"]}
    assert set(compose["volumes"]) >= set(mounts.values())
    assert runtime["WORKDIR"] in mounts
    # Secrets are required from the environment, never written here.
    assert (
        "${JWT_SECRET:?" in COMPOSE.read_text() and "${POSTGRES_PASSWORD:?" in COMPOSE.read_text()
    )


# ------------------------------------------------------------------------------ the entry


def test_the_image_command_runs_here_and_passes_its_health_check(
    tmp_path: Path, pg_dsn: str
) -> None:
    """ENTRYPOINT + CMD with the image's ENV (the port made free for the test, the database
    given as compose gives it), run from the image's WORKDIR layout; then its HEALTHCHECK."""
    runtime = stages(instructions(DOCKERFILE.read_text()))[-1]
    settings = dict(runtime)
    command = [*exec_form(settings["ENTRYPOINT"]), *exec_form(settings["CMD"])]
    assert command[:2] == ["gatewayd", "run"]
    config = Path(command[command.index("--config") + 1])
    assert config == Path("/etc/gatewayd/gatewayd.toml")
    # The image copies gatewayd.toml there; here it is the repository's.
    config_here = tmp_path / "gatewayd.toml"
    config_here.write_text((ROOT / "gatewayd.toml").read_text())

    env = {
        **env_of(runtime),
        "GATEWAYD_SERVER_PORT": "0",
        "GATEWAYD_DATABASE_URL": pg_dsn,
        "GATEWAYD_WHATSAPP_MODE": "sim",
        "GATEWAYD_MEDIA_TEMP_DIR": str(tmp_path / "media"),
    }
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "gatewayd"), "check-config", str(config_here)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    workdir = tmp_path / "var-lib-gatewayd"
    workdir.mkdir()
    with SimDaemon.running(config_here, cwd=workdir, extra_env=env) as daemon:
        # The image's GATEWAYD_SERVER_HOST: every interface of the container's namespace.
        assert daemon.base_url.startswith("http://0.0.0.0:")
        port = daemon.base_url.rsplit(":", 1)[1]
        check = re.search(r"CMD (\[.*\])$", settings["HEALTHCHECK"])
        assert check is not None
        probe = [
            part.replace("127.0.0.1:3000", f"127.0.0.1:{port}")
            for part in exec_form(check.group(1))
        ]
        assert probe[0] == "python"
        result = subprocess.run([sys.executable, *probe[1:]], check=False, timeout=30)
        assert result.returncode == 0
