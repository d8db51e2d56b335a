#!/usr/bin/env bash
# Installs the Stoplight Prism CLI (npm @stoplight/prism-cli), which the ignored Neon tests use
# to validate every request and response against Neon's official OpenAPI spec.
#
#   export SLUICE_PRISM=$(bash scripts/ci-prism.sh)
#   cargo test --test neon -- --ignored
#
# Installs into ${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}/prism and does nothing when the
# pinned version is already there. Logs go to stderr; the last line on stdout is the absolute
# path of the prism binary.
set -euo pipefail

# 5.14.2 is the newest 5.x that runs on Node 18/20 (5.15+ wants Node >= 24).
PRISM_VERSION="${SLUICE_PRISM_VERSION:-5.14.2}"
MIN_NODE="18.20.1"

log() { echo "ci-prism: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v node >/dev/null 2>&1 || die "node is not on PATH; install Node.js >= $MIN_NODE"
command -v npm >/dev/null 2>&1 || die "npm is not on PATH; install Node.js >= $MIN_NODE with npm"
node_version="$(node -p 'process.versions.node')"
if [ "$(printf '%s\n%s\n' "$MIN_NODE" "$node_version" | sort -V | head -n1)" != "$MIN_NODE" ]; then
    die "prism $PRISM_VERSION needs Node.js >= $MIN_NODE, found $node_version"
fi

tools="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
mkdir -p "$tools"
tools="$(cd "$tools" && pwd -P)"
dir="$tools/prism"
bin="$dir/node_modules/.bin/prism"

installed_version() {
    local manifest="$dir/node_modules/@stoplight/prism-cli/package.json"
    [ -f "$manifest" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$manifest" 2>/dev/null || true
}

if [ -x "$bin" ] && [ "$(installed_version)" = "$PRISM_VERSION" ]; then
    log "@stoplight/prism-cli@$PRISM_VERSION already installed in $dir"
else
    # Install beside the final place and swap it in, so an interrupted install never leaves a
    # half-populated directory that the check above would accept.
    staging="$dir.new.$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    trap 'rm -rf "$staging"' EXIT
    log "installing @stoplight/prism-cli@$PRISM_VERSION into $dir"
    printf '{"name":"sluice-tools-prism","private":true}\n' >"$staging/package.json"
    npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
        "@stoplight/prism-cli@$PRISM_VERSION" >&2
    [ -x "$staging/node_modules/.bin/prism" ] || die "npm finished but $staging/node_modules/.bin/prism is missing"
    rm -rf "$dir"
    mv "$staging" "$dir"
    trap - EXIT
fi

version="$("$bin" --version 2>/dev/null || true)"
[ "$version" = "$PRISM_VERSION" ] || die "$bin --version printed '$version', expected $PRISM_VERSION"
log "prism $version ready"
echo "$bin"
