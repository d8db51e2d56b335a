#!/usr/bin/env bash
# Checks `sluice diff` against migra (PyPI) on the shared migration corpora: for each corpus,
# a database with every migration ("full") and one without the last $DRIFT_LAG ("lagging"),
# then `sluice diff lagging full --json` and `migra --unsafe lagging full` must name the same
# objects (after the normalisation rules of scripts/drift_vs_migra.py, listed in
# docs/drift-vs-migra.md). Then the script applies `sluice diff lagging full --sql` to the
# lagging database and requires `sluice diff lagging full` to report nothing (exit 0), and
# migra to agree that nothing is left.
#
# Usage: bash scripts/drift-vs-migra.sh [--install | --install-only]
#
#   --install      install migra==$MIGRA_VERSION (with psycopg2-binary and setuptools, all
#                  pinned below) from PyPI into a private virtualenv
#                  (${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}/migra) and use it
#   --install-only the same, then print the path of its migra binary and stop
#
# Environment:
#   SLUICE_BIN       the sluice binary (default target/debug/sluice, as `cargo test` leaves it)
#   DRIFT_CORPORA    corpora to check, space-separated (default: all eight, "documenso
#                    ghostfolio hoppscotch langfuse papermark rallly typebot umami", about 40 s
#                    with a debug build; "langfuse documenso rallly" takes about 16 s)
#   DRIFT_LAG        how many migrations the lagging database misses (default 5)
#   SLUICE_CORPORA   corpora directory (default <repo>/../shared/corpora); each corpus is
#                    <name>/migrations/<folder>/migration.sql (Prisma layout)
#   MIGRA            migra binary (default: the installed one with --install, else `migra`);
#                    the comparison imports migra with the Python beside it
#   SLUICE_PG_BINDIR PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   DRIFT_KEEP       set to 1 to keep the work directory (reports, migra SQL, sluice SQL)
#
# The script starts its own throwaway PostgreSQL cluster (scripts/lib-pgcluster.sh: a temp
# directory, a Unix socket only, trust auth; as root the server runs as `postgres`/`nobody`),
# and stops and deletes it on exit. It never connects to any other server.
#
# Output (stdout): per corpus a table of the objects with who reported them, the migra
# statements folded by each rule, the result of applying sluice's SQL, and a summary line.
# Exit 0 when every corpus matches and converges; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

MIGRA_VERSION="3.0.1663481299"
# migra's own dependencies, pinned too: schemainspect imports pkg_resources, which recent
# setuptools releases no longer ship (84.2.1 has none); sqlbag/SQLAlchemy are what connects.
MIGRA_PINS=(
    "migra==$MIGRA_VERSION"
    "schemainspect==3.1.1663587362"
    "sqlbag==0.1.1617247075"
    "SQLAlchemy==2.1.9"
    "psycopg2-binary==2.9.13"
    "setuptools==75.8.0"
)
PGC_LOG_PREFIX="drift-vs-migra"
log() { echo "drift-vs-migra: $*" >&2; }

# --install: the private virtualenv, reused when it already has every pinned version.
install_migra() {
    command -v python3 >/dev/null 2>&1 || { log "python3 is not installed"; exit 1; }
    local tools venv pin name want have missing=()
    tools="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
    mkdir -p "$tools"
    venv="$(cd "$tools" && pwd)/migra"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtualenv $venv"
        python3 -m venv "$venv" >&2 || {
            log "python3 -m venv failed; on Debian/Ubuntu: apt-get install -y python3-venv"
            rm -rf "$venv"
            exit 1
        }
    fi
    for pin in "${MIGRA_PINS[@]}"; do
        name="${pin%%==*}"
        want="${pin#*==}"
        have="$("$venv/bin/python" -c 'import sys, importlib.metadata as m
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass' "$name" 2>/dev/null || true)"
        [ "$have" = "$want" ] || missing+=("$pin")
    done
    if [ "${#missing[@]}" -gt 0 ] || [ ! -x "$venv/bin/migra" ]; then
        log "installing ${MIGRA_PINS[*]} into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${MIGRA_PINS[@]}" >&2
    else
        log "migra $MIGRA_VERSION already installed in $venv"
    fi
    MIGRA="$venv/bin/migra"
}

case "${1:-}" in
    --install) install_migra ;;
    --install-only)
        # For scripts/bench-diff.sh: install, print the migra binary's path, nothing else.
        install_migra
        echo "$MIGRA"
        exit 0
        ;;
    "") ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) log "unknown argument $1 (see --help)"; exit 1 ;;
esac

migra="${MIGRA:-migra}"
if ! command -v "$migra" >/dev/null 2>&1; then
    log "no migra binary ($migra); pass --install or set MIGRA"
    exit 1
fi
migra="$(command -v "$migra")"
migra_python="$(dirname "$migra")/python"
[ -x "$migra_python" ] || migra_python="$(command -v python3)"
"$migra_python" -c 'import migra, sqlbag' 2>/dev/null || {
    log "$migra_python cannot import migra; pass --install or set MIGRA to a virtualenv's migra"
    exit 1
}

sluice="${SLUICE_BIN:-target/debug/sluice}"
if [ ! -x "$sluice" ]; then
    log "no sluice binary at $sluice: run \`cargo build\` (or \`cargo test\`) first, or set SLUICE_BIN"
    exit 1
fi
sluice="$(cd "$(dirname "$sluice")" && pwd)/$(basename "$sluice")"
corpora="${SLUICE_CORPORA:-../shared/corpora}"
[ -d "$corpora" ] || { log "no corpora at $corpora (set SLUICE_CORPORA)"; exit 1; }
corpora="$(cd "$corpora" && pwd)"
lag="${DRIFT_LAG:-5}"
[[ $lag =~ ^[1-9][0-9]*$ ]] || { log "DRIFT_LAG must be a positive integer"; exit 1; }
read -r -a names <<<"${DRIFT_CORPORA:-documenso ghostfolio hoppscotch langfuse papermark rallly typebot umami}"
[ "${#names[@]}" -gt 0 ] || { log "DRIFT_CORPORA is empty"; exit 1; }
helper="$PWD/scripts/drift_vs_migra.py"

# shellcheck source=scripts/lib-pgcluster.sh
source scripts/lib-pgcluster.sh

work="$(mktemp -d /tmp/sluice-drift-XXXXXX)"
if [ "${DRIFT_KEEP:-0}" = 1 ]; then
    PGC_EXTRA_CLEANUP="echo \"drift-vs-migra: kept $work\" >&2"
else
    PGC_EXTRA_CLEANUP="rm -rf '$work'"
fi
pgc_start
log "sluice $sluice; migra $("$migra_python" -c 'import importlib.metadata as m; print(m.version("migra"))'); corpora ${names[*]}; lag $lag"

# The sluice project of one corpus: environments `lagging` and `full`, URLs from the
# environment, migrations straight from the corpus (read only: `diff` never applies).
write_project() {
    local dir=$1 migrations=$2 toml_path
    mkdir -p "$dir/environments"
    toml_path=${migrations//\\/\\\\}
    toml_path=${toml_path//\"/\\\"}
    printf 'migrations = "%s"\nstate_dir = ".sluice"\n' "$toml_path" >"$dir/sluice.toml"
    printf 'url_env = "DRIFT_LAGGING_URL"\n' >"$dir/environments/lagging.toml"
    printf 'url_env = "DRIFT_FULL_URL"\n' >"$dir/environments/full.toml"
}

# `sluice diff lagging full ARGS…` in the project; exit status 0 (same) or 2 (different)
# is kept in $diff_rc, anything else is an error.
run_diff() {
    local project=$1
    shift
    diff_rc=0
    SLUICE_PROJECT="$project" DRIFT_LAGGING_URL="$lagging_url" DRIFT_FULL_URL="$full_url" \
        "$sluice" diff lagging full "$@" || diff_rc=$?
    if [ "$diff_rc" != 0 ] && [ "$diff_rc" != 2 ]; then
        log "sluice diff lagging full $* failed (exit $diff_rc)"
        return 1
    fi
}

failed=()
summaries=()
for name in "${names[@]}"; do
    start=$(date +%s%N)
    dir="$corpora/$name/migrations"
    if [ ! -d "$dir" ]; then
        log "$name: no $dir"
        failed+=("$name")
        summaries+=("$name: FAILED (no corpus)")
        continue
    fi
    pgc_corpus_files "$dir"
    files=("${CORPUS_FILES[@]}")
    n=${#files[@]}
    if [ "$n" -le "$lag" ]; then
        log "$name: only $n migrations, not more than DRIFT_LAG=$lag"
        failed+=("$name")
        summaries+=("$name: FAILED (only $n migrations)")
        continue
    fi
    db="drift_$(echo "$name" | tr -c 'a-z0-9_\n' '_')"
    lagging_db="${db}_lagging"
    full_db="${db}_full"
    out="$work/$name"
    mkdir -p "$out"
    if ! pgc_corpus_pair "$lag" "$lagging_db" "$full_db" 2>"$out/apply.err"; then
        log "$name: building the databases failed:"
        cat "$out/apply.err" >&2
        failed+=("$name")
        summaries+=("$name: FAILED (the corpus does not apply)")
        continue
    fi
    lagging_url="$(pgc_url "$lagging_db")"
    full_url="$(pgc_url "$full_db")"
    write_project "$out/project" "$dir"

    echo
    echo "## $name: $n migrations; lagging misses:"
    for f in "${files[@]:n-lag}"; do
        echo "   $(basename "$(dirname "$f")")"
    done

    if ! run_diff "$out/project" --json >"$out/sluice.json"; then
        failed+=("$name")
        summaries+=("$name: FAILED (sluice diff --json exit $diff_rc)")
        continue
    fi
    sluice_rc=$diff_rc
    migra_rc=0
    "$migra" --unsafe "$(pgc_sa_url "$lagging_db")" "$(pgc_sa_url "$full_db")" \
        >"$out/migra.sql" 2>"$out/migra.err" || migra_rc=$?
    if [ "$migra_rc" != 0 ] && [ "$migra_rc" != 2 ]; then
        log "$name: migra failed (exit $migra_rc):"
        cat "$out/migra.err" >&2
        failed+=("$name")
        summaries+=("$name: FAILED (migra exit $migra_rc)")
        continue
    fi

    verdict=OK
    if ! "$migra_python" "$helper" --corpus "$name" --sluice-json "$out/sluice.json" \
        --migra-sql "$out/migra.sql" --from-url "$(pgc_sa_url "$lagging_db")" \
        --to-url "$(pgc_sa_url "$full_db")" --statements-out "$out/migra.json" \
        | tee "$out/compare.txt"; then
        verdict="MISMATCH"
    fi
    objects="$(grep -Eo '[0-9]+ object\(s\) reported by both, [0-9]+ explained' "$out/compare.txt" | tail -n 1 || true)"

    # Converge: sluice's own SQL on the lagging side, then both tools must see nothing.
    if ! run_diff "$out/project" --sql >"$out/fix.sql"; then
        failed+=("$name")
        summaries+=("$name: FAILED (sluice diff --sql exit $diff_rc)")
        continue
    fi
    steps="$(head -n 1 "$out/fix.sql" | grep -Eo '[0-9]+ step\(s\)' || echo '? step(s)')"
    destructive=$(grep -c '^-- DESTRUCTIVE' "$out/fix.sql" || true)
    converged=yes
    # A column added NOT NULL without a default cannot go into a table that has rows; sluice
    # marks such a step with a WARNING comment (the corpora's own migrations backfill with a
    # temporary default). Those tables are emptied first here (TRUNCATE … CASCADE: this is a
    # throwaway database; sluice's own tests do the same), which is data, not schema.
    emptied=()
    while IFS= read -r table; do
        [ -n "$table" ] || continue
        if [ "$(pgc_psql "$lagging_db" -At -c "SELECT EXISTS (SELECT FROM $table)")" = t ]; then
            pgc_psql "$lagging_db" -c "TRUNCATE $table CASCADE"
            emptied+=("$table")
        fi
    done < <(awk '/^-- .*WARNING: NOT NULL without a default/ { warned = 1; next }
                  warned && match($0, /^ALTER TABLE .* ADD COLUMN /) {
                      t = substr($0, 13); sub(/ ADD COLUMN .*/, "", t); print t }
                  { warned = 0 }' "$out/fix.sql" | sort -u)
    if [ "${#emptied[@]}" -gt 0 ]; then
        echo "-- emptied before the --sql script (rows block a required column without default): ${emptied[*]}"
    fi
    if ! pgc_psql "$lagging_db" -f "$out/fix.sql" >"$out/fix.log" 2>&1; then
        echo "!! applying sluice's --sql to $lagging_db failed:"
        sed 's/^/   /' "$out/fix.log"
        converged="no (the --sql script failed)"
    else
        if ! run_diff "$out/project" >"$out/after.txt"; then
            converged="no (sluice diff failed after the --sql script)"
        elif [ "$diff_rc" != 0 ]; then
            echo "!! after applying sluice's --sql, sluice diff lagging full still reports:"
            sed 's/^/   /' "$out/after.txt"
            converged="no (sluice still reports differences)"
        else
            after_rc=0
            "$migra" --unsafe "$(pgc_sa_url "$lagging_db")" "$(pgc_sa_url "$full_db")" \
                >"$out/migra-after.sql" 2>&1 || after_rc=$?
            if [ "$after_rc" != 0 ]; then
                echo "!! after applying sluice's --sql, migra still reports (exit $after_rc):"
                sed 's/^/   /' "$out/migra-after.sql"
                converged="no (migra still reports differences)"
            fi
        fi
    fi
    echo "-- sluice --sql: $steps ($destructive destructive) applied to $lagging_db; converged: $converged"
    ms=$((($(date +%s%N) - start) / 1000000))
    if [ "$verdict" != OK ] || [ "$converged" != yes ]; then
        failed+=("$name")
    fi
    summaries+=("$name: objects $verdict (${objects:-?}; sluice exit $sluice_rc, migra exit $migra_rc); --sql converged: $converged; ${ms} ms")
    pgc_psql postgres -c "DROP DATABASE \"$lagging_db\"" -c "DROP DATABASE \"$full_db\""
done

echo
echo "== summary (lag $lag)"
printf '%s\n' "${summaries[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    log "failed: ${failed[*]}"
    exit 1
fi
