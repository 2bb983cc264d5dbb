#!/usr/bin/env bash
# Install gatewayd from a wheel as a systemd service: the steps of docs/deploy.md, in order.
#
#   make dist && sudo tools/install.sh dist/gatewayd-*.whl
#
# Run it again with a newer wheel to upgrade: the venv is replaced, the config and the
# environment file are kept. DESTDIR=/some/dir installs under that directory instead of /
# (the tests do): then no system user is made and systemctl is not called.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:?usage: tools/install.sh WHEEL}
dest=${DESTDIR:-}
python=${PYTHON:-python3}

# 1. A system user without a login, owning nothing but its state directory.
if [[ -z $dest ]] && ! id -u gatewayd >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/gatewayd --shell /usr/sbin/nologin gatewayd
fi

# 2. The code: a venv under /opt/gatewayd with the wheel (the dashboard is inside it).
install -d -m 0755 "$dest/opt/gatewayd"
rm -rf "$dest/opt/gatewayd/.venv"
"$python" -m venv "$dest/opt/gatewayd/.venv"
"$dest/opt/gatewayd/.venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
# Runs a command as the unit runs the daemon (docs/deploy.md, docs/backup.md: backups, restores).
install -m 0755 tools/as-service.sh "$dest/opt/gatewayd/as-service.sh"

# 3. The config in /etc/gatewayd; secrets in the environment file, readable by root only
#    (systemd reads it before dropping privileges).
install -d -m 0755 "$dest/etc/gatewayd"
[[ -e $dest/etc/gatewayd/gatewayd.toml ]] ||
    install -m 0644 gatewayd.toml "$dest/etc/gatewayd/gatewayd.toml"
[[ -e $dest/etc/gatewayd/gatewayd.env ]] ||
    install -m 0600 systemd/gatewayd.env.example "$dest/etc/gatewayd/gatewayd.env"

# 4. The unit (its state directory /var/lib/gatewayd is made by systemd: StateDirectory=).
install -D -m 0644 systemd/gatewayd.service "$dest/etc/systemd/system/gatewayd.service"

# 5. The config must load before the service is (re)started.
"$dest/opt/gatewayd/.venv/bin/gatewayd" check-config "$dest/etc/gatewayd/gatewayd.toml" >/dev/null

if [[ -z $dest ]]; then
    systemctl daemon-reload
    systemctl enable gatewayd
    systemctl restart gatewayd
    echo "gatewayd is running: journalctl -u gatewayd -f"
else
    echo "installed under $dest"
fi
