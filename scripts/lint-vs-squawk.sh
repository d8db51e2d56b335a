#!/usr/bin/env bash
# Counts squawk's findings on the shared migration corpora for the rules that overlap with
# `sluice lint` (docs/lint.md, "Comparison with squawk"), per corpus and per rule, so the
# numbers in the docs can be reproduced and compared with sluice's own counts (printed by
# `cargo test --lib lint::tests::corpora -- --ignored --nocapture`, later `sluice lint --json`).
#
# Every migration file is linted on its own, as squawk always does; with the default
# SQUAWK_MODE=tx squawk is told that each file runs in one transaction
# (--assume-in-transaction), which is what sluice does with a Prisma migration and what makes
# squawk skip CREATE INDEX / foreign keys on tables created earlier in the same file.
#
# Usage: bash scripts/lint-vs-squawk.sh [--install]
#
#   --install      install squawk-cli==$SQUAWK_VERSION from PyPI into a private virtualenv
#                  (${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}/squawk) and use it
#
# Environment:
#   SLUICE_CORPORA  corpora directory (default <repo>/../shared/corpora); each corpus is
#                   <name>/migrations/<folder>/migration.sql (Prisma layout)
#   SQUAWK          squawk binary (default: the installed one with --install, else `squawk`)
#   SQUAWK_MODE     tx (default: --assume-in-transaction) or plain (no flag)
#
# Output (stdout): tab-separated `corpus  squawk-rule  sluice-rule  count`, every overlapping
# rule listed (zeros included), then the same counts summed per sluice rule.
set -euo pipefail
cd "$(dirname "$0")/.."

SQUAWK_VERSION="2.70.0"
log() { echo "lint-vs-squawk: $*" >&2; }

if [ "${1:-}" = "--install" ]; then
    command -v python3 >/dev/null 2>&1 || { log "python3 is not installed"; exit 1; }
    tools="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
    mkdir -p "$tools"
    venv="$(cd "$tools" && pwd)/squawk"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtualenv $venv"
        python3 -m venv "$venv" >&2 || {
            log "python3 -m venv failed; on Debian/Ubuntu: apt-get install -y python3-venv"
            rm -rf "$venv"
            exit 1
        }
    fi
    if ! "$venv/bin/squawk" --version 2>/dev/null | grep -qx "squawk $SQUAWK_VERSION"; then
        log "installing squawk-cli==$SQUAWK_VERSION into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "squawk-cli==$SQUAWK_VERSION" >&2
    fi
    SQUAWK="$venv/bin/squawk"
fi

squawk="${SQUAWK:-squawk}"
command -v "$squawk" >/dev/null 2>&1 || {
    log "no squawk binary ($squawk); pass --install or set SQUAWK"
    exit 1
}
command -v python3 >/dev/null 2>&1 || { log "python3 is needed to read squawk's JSON"; exit 1; }
corpora="${SLUICE_CORPORA:-../shared/corpora}"
[ -d "$corpora" ] || { log "no corpora at $corpora (set SLUICE_CORPORA)"; exit 1; }

case "${SQUAWK_MODE:-tx}" in
    tx) flags=(--assume-in-transaction) ;;
    plain) flags=() ;;
    *) log "SQUAWK_MODE must be tx or plain"; exit 1 ;;
esac
log "$("$squawk" --version), mode ${SQUAWK_MODE:-tx}, corpora $corpora"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for dir in "$corpora"/*/migrations; do
    [ -d "$dir" ] || continue
    name="$(basename "$(dirname "$dir")")"
    # Byte-wise folder order, as sluice applies them (the order does not change squawk's counts).
    mapfile -t files < <(LC_ALL=C find "$dir" -mindepth 2 -maxdepth 2 -name migration.sql | LC_ALL=C sort)
    if [ "${#files[@]}" -eq 0 ]; then
        continue
    fi
    # squawk exits 1 when it reports anything; the JSON is checked below instead.
    "$squawk" "${flags[@]}" --reporter json "${files[@]}" >"$work/$name.json" || true
    log "$name: ${#files[@]} files"
done

python3 - "$work" <<'EOF'
import json, os, sys
# squawk rule -> the sluice rule it overlaps with.
MAP = [
    ("ban-drop-table", "drop-table"),
    ("ban-drop-column", "drop-column"),
    ("ban-drop-type", "drop-type"),
    ("ban-drop-domain", "drop-type"),
    ("changing-column-type", "change-column-type"),
    ("adding-not-nullable-field", "set-not-null"),
    ("adding-required-field", "add-not-null-without-default"),
    ("renaming-column", "rename"),
    ("renaming-table", "rename"),
    ("renaming-object", "rename"),
    ("require-concurrent-index-creation", "index-without-concurrently"),
    ("adding-foreign-key-constraint", "foreign-key-without-not-valid"),
]
work = sys.argv[1]
rows, per_sluice = [], {}
for fname in sorted(os.listdir(work)):
    corpus = fname[: -len(".json")]
    try:
        with open(os.path.join(work, fname)) as f:
            violations = json.load(f)
    except ValueError as e:
        sys.exit(f"lint-vs-squawk: squawk output for {corpus} is not JSON: {e}")
    counts = {}
    for v in violations:
        counts[v.get("rule_name")] = counts.get(v.get("rule_name"), 0) + 1
    for squawk_rule, sluice_rule in MAP:
        n = counts.get(squawk_rule, 0)
        rows.append((corpus, squawk_rule, sluice_rule, n))
        key = (corpus, sluice_rule)
        per_sluice[key] = per_sluice.get(key, 0) + n
print("corpus\tsquawk-rule\tsluice-rule\tcount")
for r in rows:
    print("\t".join(map(str, r)))
print()
print("corpus\tsluice-rule\tsquawk-count")
for (corpus, rule), n in sorted(per_sluice.items()):
    print(f"{corpus}\t{rule}\t{n}")
EOF
