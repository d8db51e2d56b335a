#!/usr/bin/env bash
# Times `sluice diff` against migra on the largest corpus (langfuse): a database with every
# migration ("full") and one without the last $DRIFT_LAG ("lagging"), both in a private
# throwaway PostgreSQL cluster (scripts/lib-pgcluster.sh), then in the same run:
#
#   sluice diff lagging full          RUNS_SLUICE times (default 10)
#   sluice diff lagging full --sql    RUNS_SLUICE times
#   migra --unsafe lagging full       RUNS_MIGRA times (default 5)
#
# one untimed warm-up of each first, the three interleaved round by round. Each time is the
# wall clock of the whole process (start, connect, read both schemas, compare, print to
# /dev/null), taken with `date +%s%N`. Prints every run, then median/min/max in ms per series
# and the ratio of the medians (migra / sluice). For context it also times migra's own work
# without the Python interpreter's start and imports (Migration + add_all_changes in one
# process, RUNS_MIGRA times, fresh connections each time); the ratio that counts is the CLI's.
#
# Usage: bash scripts/bench-diff.sh [--install]
#
#   --install      install the pinned migra into the private virtualenv first
#                  (scripts/drift-vs-migra.sh --install-only)
#
# Environment:
#   SLUICE_BIN       the sluice binary (default target/release/sluice; use a release build
#                    for figures: `cargo build --release`)
#   MIGRA            migra binary (default: the installed one with --install, else `migra`)
#   BENCH_CORPUS     corpus (default langfuse, the largest)
#   DRIFT_LAG        migrations the lagging database misses (default 5)
#   RUNS_SLUICE      timed runs of each sluice series (default 10)
#   RUNS_MIGRA       timed runs of migra (default 5)
#   SLUICE_CORPORA   corpora directory (default <repo>/../shared/corpora)
#   SLUICE_PG_BINDIR PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

PGC_LOG_PREFIX="bench-diff"
log() { echo "bench-diff: $*" >&2; }

case "${1:-}" in
    --install) MIGRA="$(bash scripts/drift-vs-migra.sh --install-only | tail -n 1)" ;;
    "") ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) log "unknown argument $1 (see --help)"; exit 1 ;;
esac

migra="${MIGRA:-migra}"
command -v "$migra" >/dev/null 2>&1 || { log "no migra binary ($migra); pass --install or set MIGRA"; exit 1; }
migra="$(command -v "$migra")"
sluice="${SLUICE_BIN:-target/release/sluice}"
if [ ! -x "$sluice" ]; then
    log "no sluice binary at $sluice: run \`cargo build --release\` first, or set SLUICE_BIN"
    exit 1
fi
sluice="$(cd "$(dirname "$sluice")" && pwd)/$(basename "$sluice")"
corpus="${BENCH_CORPUS:-langfuse}"
corpora="${SLUICE_CORPORA:-../shared/corpora}"
dir="$corpora/$corpus/migrations"
[ -d "$dir" ] || { log "no corpus at $dir (set SLUICE_CORPORA / BENCH_CORPUS)"; exit 1; }
dir="$(cd "$dir" && pwd)"
lag="${DRIFT_LAG:-5}"
runs_sluice="${RUNS_SLUICE:-10}"
runs_migra="${RUNS_MIGRA:-5}"
for v in "$lag" "$runs_sluice" "$runs_migra"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { log "DRIFT_LAG, RUNS_SLUICE and RUNS_MIGRA must be positive integers"; exit 1; }
done

# shellcheck source=scripts/lib-pgcluster.sh
source scripts/lib-pgcluster.sh
work="$(mktemp -d /tmp/sluice-bench-diff-XXXXXX)"
PGC_EXTRA_CLEANUP="rm -rf '$work'"
pgc_start

pgc_corpus_files "$dir"
pgc_corpus_pair "$lag" bench_lagging bench_full
mkdir -p "$work/project/environments"
toml_path=${dir//\\/\\\\}
toml_path=${toml_path//\"/\\\"}
printf 'migrations = "%s"\nstate_dir = ".sluice"\n' "$toml_path" >"$work/project/sluice.toml"
printf 'url_env = "BENCH_LAGGING_URL"\n' >"$work/project/environments/lagging.toml"
printf 'url_env = "BENCH_FULL_URL"\n' >"$work/project/environments/full.toml"
export SLUICE_PROJECT="$work/project"
BENCH_LAGGING_URL="$(pgc_url bench_lagging)"
BENCH_FULL_URL="$(pgc_url bench_full)"
export BENCH_LAGGING_URL BENCH_FULL_URL
migra_from="$(pgc_sa_url bench_lagging)"
migra_to="$(pgc_sa_url bench_full)"

# Runs one command (stdout to /dev/null), requires exit 2 ("there are differences") from
# both tools, and prints the wall-clock milliseconds with three decimals.
timed() {
    local t0 t1 rc=0
    t0=$(date +%s%N)
    "$@" >/dev/null 2>"$work/stderr" || rc=$?
    t1=$(date +%s%N)
    if [ "$rc" != 2 ]; then
        log "$* exited $rc (expected 2, differences):"
        cat "$work/stderr" >&2
        exit 1
    fi
    awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f\n", ns / 1e6 }'
}

plain=("$sluice" diff lagging full)
sql=("$sluice" diff lagging full --sql)
mig=("$migra" --unsafe "$migra_from" "$migra_to")

log "$corpus: ${#CORPUS_FILES[@]} migrations, lagging misses the last $lag; sluice $sluice; migra $("$(dirname "$migra")/python" -c 'import importlib.metadata as m; print(m.version("migra"))' 2>/dev/null || echo '?')"
log "warm-up"
timed "${plain[@]}" >/dev/null
timed "${sql[@]}" >/dev/null
timed "${mig[@]}" >/dev/null

: >"$work/plain"
: >"$work/sql"
: >"$work/migra"
rounds=$((runs_sluice > runs_migra ? runs_sluice : runs_migra))
echo "round  series                            ms"
for ((i = 1; i <= rounds; i++)); do
    if [ "$i" -le "$runs_sluice" ]; then
        t=$(timed "${plain[@]}")
        echo "$t" >>"$work/plain"
        printf '%5d  %-30s %10s\n' "$i" "sluice diff" "$t"
        t=$(timed "${sql[@]}")
        echo "$t" >>"$work/sql"
        printf '%5d  %-30s %10s\n' "$i" "sluice diff --sql" "$t"
    fi
    if [ "$i" -le "$runs_migra" ]; then
        t=$(timed "${mig[@]}")
        echo "$t" >>"$work/migra"
        printf '%5d  %-30s %10s\n' "$i" "migra --unsafe" "$t"
    fi
done

# For context, migra without its interpreter start and imports: the same Migration calls in
# one Python process, RUNS_MIGRA times after one warm-up, each with fresh connections.
migra_python="$(dirname "$migra")/python"
if [ -x "$migra_python" ] && "$migra_python" -c 'import migra' 2>/dev/null; then
    "$migra_python" - "$migra_from" "$migra_to" "$runs_migra" >"$work/inproc" <<'PY'
import sys
import time

from migra import Migration
from sqlbag import S


def once(a, b):
    with S(a) as s0, S(b) as s1:
        m = Migration(s0, s1)
        m.set_safety(False)
        m.add_all_changes()
        return m.sql


frm, to, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
once(frm, to)
for _ in range(n):
    t0 = time.perf_counter()
    once(frm, to)
    print("%.3f" % ((time.perf_counter() - t0) * 1000))
PY
fi

# median/min/max of a file of numbers, one a line.
stats() {
    sort -g "$1" | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%d %.1f %.1f %.1f\n", NR, m, v[1], v[NR] }'
}
read -r n_p med_p min_p max_p <<<"$(stats "$work/plain")"
read -r n_s med_s min_s max_s <<<"$(stats "$work/sql")"
read -r n_m med_m min_m max_m <<<"$(stats "$work/migra")"
echo
echo "corpus $corpus (${#CORPUS_FILES[@]} migrations, lag $lag), PostgreSQL $("$PGC_BINDIR/postgres" -V | awk '{print $3}') private cluster, $(nproc) cores"
printf '%-38s %5s %10s %8s %8s\n' "series" "runs" "median ms" "min ms" "max ms"
printf '%-38s %5s %10s %8s %8s\n' "sluice diff lagging full" "$n_p" "$med_p" "$min_p" "$max_p"
printf '%-38s %5s %10s %8s %8s\n' "sluice diff lagging full --sql" "$n_s" "$med_s" "$min_s" "$max_s"
printf '%-38s %5s %10s %8s %8s\n' "migra --unsafe lagging full" "$n_m" "$med_m" "$min_m" "$max_m"
if [ -s "$work/inproc" ]; then
    read -r n_i med_i min_i max_i <<<"$(stats "$work/inproc")"
    printf '%-38s %5s %10s %8s %8s\n' "(migra in-process, no start/imports)" "$n_i" "$med_i" "$min_i" "$max_i"
fi
awk -v p="$med_p" -v s="$med_s" -v m="$med_m" 'BEGIN {
    printf "migra / sluice diff (medians): %.1fx; migra / sluice diff --sql: %.1fx\n", m / p, m / s }'
if [ -s "$work/inproc" ]; then
    awk -v p="$med_p" -v i="$med_i" 'BEGIN {
        printf "(migra in-process / sluice diff: %.1fx)\n", i / p }'
fi
