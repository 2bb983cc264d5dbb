"""Config: strict TOML, errors that name keys, environment overrides, diff."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest

from gatewayd.config import Config
from gatewayd.config_changes import diff, effective, merge_live
from gatewayd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def errors_of(raw: dict[str, object], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, environ)
    return info.value.errors


def test_example_file_documents_every_key_with_its_default() -> None:
    """gatewayd.toml holds every key, each at its default."""
    raw = tomllib.loads((ROOT / "gatewayd.toml").read_text())
    defaults = Config()
    for section in attrs.fields(Config):
        documented = raw[section.name]
        expected = attrs.asdict(getattr(defaults, section.name))
        assert documented == expected, section.name
    assert Config.from_toml(ROOT / "gatewayd.toml") == defaults


def test_unknown_key_is_named() -> None:
    """An unknown key is an error naming section and key."""
    assert errors_of({"server": {"prot": 3000}}) == ["server.prot: unknown key"]
    assert errors_of({"sever": {}}) == ["sever: unknown key"]


def test_wrong_type_names_key_and_expected_type() -> None:
    """A wrong type names the key and the type it wanted."""
    assert errors_of({"server": {"port": "3000"}}) == ["server.port: expected int, got str"]
    assert errors_of({"database": {"migrate_on_start": 1}}) == [
        "database.migrate_on_start: expected bool, got int"
    ]
    assert errors_of({"server": {"port": True}}) == ["server.port: expected int, got bool"]
    assert errors_of({"server": {"cors_origins": ["https://a.example", 3]}}) == [
        "server.cors_origins[1]: expected str, got int"
    ]
    assert errors_of({"server": 5}) == ["server: expected a table"]


def test_every_error_is_reported_at_once() -> None:
    """All problems of a file come back together, not just the first."""
    errors = errors_of({"server": {"port": "x", "bogus": 1}, "log": {"level": "loud"}})
    assert sorted(errors) == [
        "log.level: expected one of debug, info, warning, error, critical"
        " (or trace, warn, fatal), got 'loud'",
        "server.bogus: unknown key",
        "server.port: expected int, got str",
    ]


def test_value_rules_name_the_key() -> None:
    """Ranges and formats the type cannot express are checked too."""
    assert errors_of({"server": {"port": 70000}}) == ["server.port: expected 0..65535, got 70000"]
    assert errors_of({"database": {"url": "mysql://x"}}) == [
        "database.url: expected a postgresql:// URL"
    ]
    assert any(
        e.startswith("database.api_keys_table:")
        for e in errors_of({"database": {"api_keys_table": "x; drop"}})
    )


def test_float_key_accepts_an_integer() -> None:
    """A whole number is a valid float."""
    assert Config.from_mapping({"server": {"shutdown_grace": 3}}).server.shutdown_grace == 3.0


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is reported, with its path."""
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert str(path) in info.value.errors[0]


def test_gatewayd_environment_overrides_every_key() -> None:
    """GATEWAYD_<SECTION>_<KEY> overrides any key, parsed by its type."""
    environ: dict[str, str] = {}
    for section in attrs.fields(Config):
        for field in attrs.fields(section.type):  # type: ignore[arg-type]
            environ[f"GATEWAYD_{section.name}_{field.name}".upper()] = "PLACEHOLDER"
    # Every key has an environment name that is read (a wrong value proves it was parsed).
    typed = errors_of({}, {k: v for k, v in environ.items() if k == "GATEWAYD_SERVER_PORT"})
    assert typed == ["server.port: expected int, got 'PLACEHOLDER' (from $GATEWAYD_SERVER_PORT)"]
    config = Config.from_mapping(
        {},
        {
            "GATEWAYD_SERVER_PORT": "8081",
            "GATEWAYD_SERVER_SHUTDOWN_GRACE": "2.5",
            "GATEWAYD_SERVER_CORS_ORIGINS": "https://a.example, https://b.example",
            "GATEWAYD_DATABASE_MIGRATE_ON_START": "false",
            "GATEWAYD_LOG_LEVEL": "debug",
            "GATEWAYD_MEDIA_ALLOW_PRIVATE_URLS": "yes",
        },
    )
    assert config.server.port == 8081
    assert config.server.shutdown_grace == 2.5
    assert config.server.cors_origins == ["https://a.example", "https://b.example"]
    assert config.database.migrate_on_start is False
    assert config.log.level == "debug"
    assert config.media.allow_private_urls is True


def test_every_key_has_an_environment_name() -> None:
    """Setting each GATEWAYD_ variable to a valid value changes exactly that key."""
    defaults = Config()
    attrs.resolve_types(Config)  # the annotations are strings until something resolves them
    samples = {int: "4242", float: "4.5", bool: "true", str: None, list: "https://x.example"}
    for section in attrs.fields(Config):
        for field in attrs.fields(section.type):  # type: ignore[arg-type]
            default = getattr(getattr(defaults, section.name), field.name)
            special = {
                "log.level": "error",
                "log.format": "json",
                "whatsapp.mode": "sim",
                "database.url": "postgresql://u@h/d",
                "database.api_keys_table": "keys",
                "whatsapp.default_country_code": "44",
                "database.pool_min": "2",
                "forwarding.developer_number": "6281234567890",
                "whatsapp.sim_url": "http://127.0.0.1:4000",
                "server.base_url": "https://wa.example.com",
                "server.trusted_proxies": "10.0.0.0/8",
                "auth.jwt_secret": "a-secret-of-at-least-thirty-two-characters",
                "auth.token_ttl": "3600",
                "media.inbound_concurrency": "8",
                "media.link_ttl": "3600",
                "webhooks.schedule": "5, 10.5",
                "analytics.timezone": "Asia/Jakarta",
                "analytics.max_range_days": "731",
            }
            sample = special.get(f"{section.name}.{field.name}") or samples.get(type(default))
            if sample is None:  # other strings: any value different from the default
                sample = "/some/value"
            if isinstance(default, bool):
                sample = "false" if default else "true"
            name = f"GATEWAYD_{section.name}_{field.name}".upper()
            config = Config.from_mapping({}, {name: sample})
            changed = [c.key for c in diff(defaults, config)]
            assert changed == [f"{section.name}.{field.name}"], name


def test_deployed_service_names_are_honoured() -> None:
    """PORT, APP_BASE_URL, AI_BACKEND_URL, CORS_ORIGINS, TEMP_DIR, WWEBJS_AUTH_DIR, DB_URL, LOG_LEVEL."""
    config = Config.from_mapping(
        {},
        {
            "PORT": "3100",
            "APP_BASE_URL": "https://wa.example.com",
            "AI_BACKEND_URL": "http://ai.internal:8000",
            "CORS_ORIGINS": "https://a.example,https://b.example",
            "TEMP_DIR": "/var/tmp/gw",
            "WWEBJS_AUTH_DIR": "/var/lib/gw/auth",
            "DB_URL": "postgresql://u:p@db/gw",
            "LOG_LEVEL": "warning",
        },
    )
    assert config.server.port == 3100
    assert config.server.base_url == "https://wa.example.com"
    assert config.ai.backend_url == "http://ai.internal:8000"
    assert config.server.cors_origins == ["https://a.example", "https://b.example"]
    assert config.media.temp_dir == "/var/tmp/gw"
    assert config.whatsapp.device_dir == "/var/lib/gw/auth"
    assert config.database.url == "postgresql://u:p@db/gw"
    assert config.log.level == "warning"


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("trace", "debug"),
        ("debug", "debug"),
        ("info", "info"),
        ("warn", "warning"),
        ("WARN", "warning"),
        ("error", "error"),
        ("fatal", "critical"),
        (" Warning ", "warning"),
    ],
)
def test_deployed_service_level_names_are_accepted(given: str, level: str) -> None:
    """LOG_LEVEL and log.level take the deployed service's names (trace, warn, fatal) too."""
    assert Config.from_mapping({}, {"LOG_LEVEL": given}).log.level == level
    assert Config.from_mapping({"log": {"level": given}}).log.level == level


def test_an_unknown_level_names_the_accepted_ones_and_its_source() -> None:
    """A level no one knows is an error listing every accepted name, and the variable it came from."""
    assert errors_of({}, {"LOG_LEVEL": "verbose"}) == [
        "log.level: expected one of debug, info, warning, error, critical"
        " (or trace, warn, fatal), got 'verbose' (from $LOG_LEVEL)"
    ]
    assert errors_of({"log": {"level": "verbose"}}) == [
        "log.level: expected one of debug, info, warning, error, critical"
        " (or trace, warn, fatal), got 'verbose'"
    ]


def test_a_reload_to_a_deployed_level_name_is_a_live_change() -> None:
    """Reloading with level "trace" is the live change info → debug; "warn" after "warning" is none."""
    old = Config()
    changes = diff(old, Config.from_mapping({"log": {"level": "trace"}}))
    assert [(c.key, c.old, c.new, c.live) for c in changes] == [
        ("log.level", "info", "debug", True)
    ]
    warning = Config.from_mapping({"log": {"level": "warning"}})
    assert diff(warning, Config.from_mapping({}, {"LOG_LEVEL": "warn"})) == []


def test_base_url_must_be_a_base_url() -> None:
    """server.base_url (APP_BASE_URL) is an http(s) URL without query or fragment, or empty."""
    for good in ("", "https://wa.example.com", "http://10.0.0.5:3000/gateway/"):
        assert Config.from_mapping({}, {"APP_BASE_URL": good}).server.base_url == good
    for bad in ("wa.example.com", "ftp://wa.example.com", "https://wa.example.com/?x=1"):
        assert errors_of({"server": {"base_url": bad}}) == [
            f"server.base_url: {bad!r} is not a base URL like https://wa.example.com"
        ]


def test_gatewayd_names_win_over_deployed_names() -> None:
    """GATEWAYD_SERVER_PORT beats PORT; environment beats the file."""
    config = Config.from_mapping(
        {"server": {"port": 1}}, {"PORT": "2", "GATEWAYD_SERVER_PORT": "3"}
    )
    assert config.server.port == 3
    assert Config.from_mapping({"server": {"port": 1}}, {"PORT": "2"}).server.port == 2


def test_diff_lists_changed_keys_and_whether_they_apply_live() -> None:
    """diff() is pure and marks restart-only keys."""
    old = Config()
    new = Config.from_mapping(
        {"server": {"port": 4000, "cors_origins": ["https://a.example"]}, "log": {"level": "debug"}}
    )
    changes = diff(old, new)
    assert [(c.key, c.old, c.new, c.live) for c in changes] == [
        ("server.port", 3000, 4000, False),
        ("server.cors_origins", [], ["https://a.example"], True),
        ("log.level", "info", "debug", True),
    ]
    assert diff(new, new) == []
    assert diff(old, new) == changes  # no hidden state


def test_merge_live_keeps_restart_keys() -> None:
    """A reload applies live keys and keeps the running value of restart-only ones."""
    old = Config()
    new = Config.from_mapping(
        {"server": {"port": 4000, "body_limit": 2048}, "database": {"url": "postgresql://x/y"}}
    )
    merged = merge_live(old, new)
    assert merged.server.port == 3000
    assert merged.database.url == ""
    assert merged.server.body_limit == 2048


def test_effective_config_masks_secrets() -> None:
    """Passwords in URLs and tokens never appear in the effective config."""
    config = Config.from_mapping(
        {
            "database": {"url": "postgresql://gw:hunter2@db/gw"},
            "server": {"admin_token": "tok-secret"},
        }
    )
    shown = effective(config)
    assert shown["database"]["url"] == "postgresql://gw:***@db/gw"
    assert shown["server"]["admin_token"] == "***"
    assert "hunter2" not in repr(shown) and "tok-secret" not in repr(shown)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_config_prints_errors_and_fails(tmp_path: Path) -> None:
    """check-config lists every error on stderr and exits non-zero."""
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "x"\nprot = 1\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "server.port: expected int, got str" in result.stderr
    assert "server.prot: unknown key" in result.stderr


def test_check_config_prints_the_effective_config_masked(tmp_path: Path) -> None:
    """check-config prints the effective config with secrets masked and exits 0."""
    path = tmp_path / "good.toml"
    path.write_text('[database]\nurl = "postgresql://gw:hunter2@db/gw"\n')
    import json
    import os

    result = run_cli("check-config", str(path), env={**os.environ, "PORT": "3999"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["server"]["port"] == 3999
    assert shown["database"]["url"] == "postgresql://gw:***@db/gw"
    assert "hunter2" not in result.stdout


def test_auth_secret_and_limits_are_checked() -> None:
    """JWT_SECRET sets auth.jwt_secret (masked); a short secret, odd TTL or zero limit is named."""
    config = Config.from_mapping({}, {"JWT_SECRET": "k" * 32})
    assert config.auth.jwt_secret == "k" * 32
    assert effective(config)["auth"]["jwt_secret"] == "***"
    assert errors_of({"auth": {"jwt_secret": "short", "token_ttl": 1.0}}, {}) == [
        "auth.jwt_secret: expected at least 32 characters (or empty to generate one)",
        "auth.token_ttl: expected 60..2592000 seconds, got 1.0",
    ]
    assert errors_of({"auth": {"requests_per_minute": 0}}) == [
        "auth.requests_per_minute: expected >= 1, got 0"
    ]
