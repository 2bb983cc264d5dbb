#!/usr/bin/env bash
# Run a command as gatewayd.service runs the daemon: with the environment file's settings, in
# the state directory, as the gatewayd user. For the commands of docs/deploy.md that work on
# the service's data (check-config, backup, restore, migrate):
#
#   sudo tools/as-service.sh /opt/gatewayd/.venv/bin/gatewayd migrate status \
#       --config /etc/gatewayd/gatewayd.toml
#
# Without it they would miss what the unit gives the daemon: /etc/gatewayd/gatewayd.env
# (DB_URL, GATEWAYD_DATABASE_DATA_DIR, ...; readable by root only) and the working directory
# /var/lib/gatewayd, against which the relative paths of gatewayd.toml ("./data") resolve.
#
# The file is read as systemd reads an EnvironmentFile= of KEY=value lines: comments (# or ;)
# and blank lines skipped, whitespace around the key and the value dropped, one pair of
# surrounding quotes removed, nothing expanded. DESTDIR=/some/dir (the tests) reads the
# environment file and enters the state directory under that directory, and does not change
# the user.
set -euo pipefail
(($#)) || { echo "usage: tools/as-service.sh COMMAND [ARG...]" >&2; exit 2; }
dest=${DESTDIR:-}
env_file=$dest/etc/gatewayd/gatewayd.env
state=$dest/var/lib/gatewayd

if [[ -e $env_file ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*([#\;]|$) ]] && continue
        [[ $line == *=* ]] || { echo "$env_file: not KEY=value: $line" >&2; exit 2; }
        key=${line%%=*}
        value=${line#*=}
        key=${key#"${key%%[![:space:]]*}"}
        key=${key%"${key##*[![:space:]]}"}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        export "$key=$value"
    done <"$env_file"
fi
cd "$state" 2>/dev/null || { echo "$state does not exist yet: start gatewayd once" >&2; exit 2; }
if [[ -z $dest && $(id -u) == 0 ]]; then
    exec runuser -u gatewayd -- "$@"
fi
exec "$@"
