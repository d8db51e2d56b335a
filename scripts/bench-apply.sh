#!/usr/bin/env bash
# Benchmark: apply the langfuse migration corpus to fresh PostgreSQL databases with
#   (a) `sluice apply` (release build), and
#   (b) ONE `psql` session running a generated script: `BEGIN; \i file; COMMIT;` per
#       transactional migration, a bare `\i file` for migrations that must run outside a
#       transaction (CREATE/DROP INDEX CONCURRENTLY, or files with their own BEGIN;/COMMIT;).
# Each side runs $RUNS times (default 5), alternating which side goes first, each run on a
# fresh database. Prints per-run wall-clock times, the medians and the ratio sluice/psql.
#
# Usage: bash scripts/bench-apply.sh [--psql-only | --sluice-only] [--keep]
#
# Environment:
#   SLUICE_BENCH_PG  libpq URL of a server/database where this may CREATE/DROP DATABASE
#                    (default postgres://postgres@127.0.0.1:5432/postgres). Databases are
#                    named sluice_bench_<pid>_<run>_<side> and dropped again.
#   SLUICE_CORPORA   corpora directory (default <repo>/../shared/corpora)
#   RUNS             runs per side (default 5)
#   SLUICE_BIN       use this sluice binary instead of building target/release/sluice
#   PSQL             psql binary (default: psql on PATH)
set -euo pipefail

mode=both
keep=0
for arg in "$@"; do
    case "$arg" in
        --psql-only) mode=psql ;;
        --sluice-only) mode=sluice ;;
        --keep) keep=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
corpora=${SLUICE_CORPORA:-$repo/../shared/corpora}
migrations=$(cd "$corpora/langfuse/migrations" && pwd)
runs=${RUNS:-5}
admin_url=${SLUICE_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
psql_bin=${PSQL:-psql}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}

if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "RUNS must be a positive integer, got '$runs'" >&2
    exit 2
fi

# URL of database $2 on the server of URL $1 (user, host, port and query kept).
url_for() {
    local url=$1 db=$2 base query="" scheme rest authority
    if [[ $url == *\?* ]]; then
        base=${url%%\?*}
        query="?${url#*\?}"
    else
        base=$url
    fi
    if [[ $base != *://* ]]; then
        echo "SLUICE_BENCH_PG must be a URL (postgres://...), got '$url'" >&2
        return 1
    fi
    scheme=${base%%://*}
    rest=${base#*://}
    authority=${rest%%/*}
    printf '%s://%s/%s%s\n' "$scheme" "$authority" "$db" "$query"
}

admin_psql() {
    PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" "$psql_bin" -X -q -A -t -v ON_ERROR_STOP=1 -d "$admin_url" "$@"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
created_dbs=()

cleanup() {
    local status=$? db
    if [[ $keep == 0 ]]; then
        for db in "${created_dbs[@]+"${created_dbs[@]}"}"; do
            admin_psql -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        done
        rm -rf "$work"
    else
        echo "kept: $work and databases: ${created_dbs[*]-}" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fresh_db() {
    local db=$1
    created_dbs+=("$db")
    admin_psql -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    admin_psql -c "CREATE DATABASE \"$db\" TEMPLATE template0" >/dev/null
}

drop_db() {
    [[ $keep == 1 ]] && return 0
    admin_psql -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null
}

now_ns() { date +%s%N; }

# --- migrations, in byte-wise name order (Prisma's rule) -----------------------------------
mapfile -d '' files < <(
    find "$migrations" -mindepth 2 -maxdepth 2 -name migration.sql -print0 | LC_ALL=C sort -z
)
if [[ ${#files[@]} == 0 ]]; then
    echo "no migrations found under $migrations" >&2
    exit 1
fi

# Must this file run outside a transaction block? CONCURRENTLY outside `--` comments, or its
# own BEGIN;/COMMIT; lines. (A grep is enough for this corpus; sluice uses a real lexer.)
non_transactional() {
    sed 's/--.*$//' "$1" | grep -qi 'concurrently' && return 0
    grep -qiE '^[[:space:]]*(BEGIN|COMMIT)[[:space:]]*;' "$1" && return 0
    return 1
}

# --- the psql script -----------------------------------------------------------------------
script=$work/apply-langfuse.psql
non_tx=0
{
    for f in "${files[@]}"; do
        quoted=${f//\'/\'\'}
        if non_transactional "$f"; then
            non_tx=$((non_tx + 1))
            printf "\\\\i '%s'\n" "$quoted"
        else
            printf "BEGIN;\n\\\\i '%s'\nCOMMIT;\n" "$quoted"
        fi
    done
} >"$script"

# --- the sluice project --------------------------------------------------------------------
sluice_bin=""
if [[ $mode != psql ]]; then
    if [[ -n ${SLUICE_BIN:-} ]]; then
        sluice_bin=$SLUICE_BIN
    else
        echo "building sluice (cargo build --release) ..." >&2
        (cd "$repo" && cargo build --release --quiet)
        sluice_bin=${CARGO_TARGET_DIR:-$repo/target}/release/sluice
        [[ $sluice_bin == /* ]] || sluice_bin=$repo/$sluice_bin
    fi
    project=$work/project
    mkdir -p "$project/environments"
    # TOML basic string: escape backslashes and double quotes.
    toml_path=${migrations//\\/\\\\}
    toml_path=${toml_path//\"/\\\"}
    printf 'migrations = "%s"\nstate_dir = ".sluice"\n' "$toml_path" >"$project/sluice.toml"
    printf 'url_env = "SLUICE_BENCH_URL"\n' >"$project/environments/bench.toml"
fi

server_version=$(admin_psql -c 'SHOW server_version')

# --- one timed run of each side; both set $elapsed (seconds) -------------------------------
elapsed=
run_psql() {
    local db=$1 start end
    fresh_db "$db"
    start=$(now_ns)
    if ! "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$(url_for "$admin_url" "$db")" \
        -f "$script" >"$work/psql.log" 2>&1; then
        echo "psql run failed on $db:" >&2
        tail -n 30 "$work/psql.log" >&2
        return 1
    fi
    end=$(now_ns)
    drop_db "$db"
    elapsed=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
}

run_sluice() {
    local db=$1 start end
    fresh_db "$db"
    rm -rf "$project/.sluice"
    start=$(now_ns)
    if ! (cd "$project" && SLUICE_BENCH_URL=$(url_for "$admin_url" "$db") \
        "$sluice_bin" apply --env bench) >"$work/sluice.log" 2>&1; then
        echo "sluice apply failed on $db:" >&2
        tail -n 30 "$work/sluice.log" >&2
        return 1
    fi
    end=$(now_ns)
    drop_db "$db"
    elapsed=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
}

median() {
    if (($# == 0)); then
        echo "-"
        return
    fi
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2];
            else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

echo "langfuse corpus: ${#files[@]} migrations ($non_tx applied outside a transaction by psql)"
echo "server: PostgreSQL $server_version at $(url_for "$admin_url" '<db>' | sed -E 's#://[^@/]*@#://#')"
echo "runs per side: $runs (alternating order, fresh database each run)"
echo

sluice_times=()
psql_times=()
for ((i = 1; i <= runs; i++)); do
    if ((i % 2 == 1)); then order="sluice psql"; else order="psql sluice"; fi
    for side in $order; do
        [[ $mode != both && $mode != "$side" ]] && continue
        db="sluice_bench_$$_${i}_${side}"
        if [[ $side == sluice ]]; then
            run_sluice "$db"
            sluice_times+=("$elapsed")
        else
            run_psql "$db"
            psql_times+=("$elapsed")
        fi
        printf '  run %d %-6s %8ss\n' "$i" "$side" "$elapsed" >&2
    done
done

cell() { if [[ -n ${1:-} ]]; then printf '%s' "$1"; else printf '%s' "-"; fi; }

printf '%-8s  %10s  %10s\n' "run" "sluice (s)" "psql (s)"
printf '%-8s  %10s  %10s\n' "--------" "----------" "----------"
for ((i = 0; i < runs; i++)); do
    printf '%-8s  %10s  %10s\n' "$((i + 1))" \
        "$(cell "${sluice_times[$i]-}")" "$(cell "${psql_times[$i]-}")"
done
s_med=$(median "${sluice_times[@]+"${sluice_times[@]}"}")
p_med=$(median "${psql_times[@]+"${psql_times[@]}"}")
printf '%-8s  %10s  %10s\n' "median" "$s_med" "$p_med"
if [[ $s_med != - && $p_med != - ]]; then
    ratio=$(awk -v s="$s_med" -v p="$p_med" 'BEGIN { printf "%.3f", s / p }')
    echo
    echo "ratio sluice/psql (medians): $ratio"
fi
