#!/usr/bin/env bash
# Installs moto's server (a local fake of the AWS APIs) into a private virtualenv and prints
# the absolute path of its `moto_server` binary as the last line on stdout; everything else
# goes to stderr. Idempotent: a venv that already has the pinned version is reused.
#
#   export SLUICE_MOTO_SERVER=$(bash scripts/ci-moto.sh)
#   cargo test --test rds -- --ignored
#
# Where: ${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}/moto. Needs python3 with the venv
# module and access to PyPI (or a pip find-links directory).
set -euo pipefail

MOTO_VERSION="5.2.1"
tools="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
venv="$tools/moto"

log() { echo "ci-moto: $*" >&2; }

command -v python3 >/dev/null 2>&1 || { log "python3 is not installed"; exit 1; }

mkdir -p "$tools"
venv="$(cd "$tools" && pwd)/moto"

if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    if ! python3 -m venv "$venv" >&2; then
        log "python3 -m venv failed; on Debian/Ubuntu install python3-venv (apt-get install -y python3-venv)"
        rm -rf "$venv"
        exit 1
    fi
fi

installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
if [ "$installed" != "$MOTO_VERSION" ] || [ ! -x "$venv/bin/moto_server" ]; then
    log "installing moto[server]==$MOTO_VERSION into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" >&2
else
    log "moto $MOTO_VERSION already installed in $venv"
fi

if [ ! -x "$venv/bin/moto_server" ]; then
    log "moto_server is missing from $venv/bin after the install"
    exit 1
fi
echo "$venv/bin/moto_server"
