#!/usr/bin/env bash
# Benchmark: `GET /v1/runs` and `GET /v1/environments` of `sluice serve` under 4 and 64
# concurrent clients while a promotion loop runs (a sibling of bench-api.sh, which measures
# /v1/environments against /v1/health under a fixed-rate load on the SQLite example).
#
# The environments are three databases on a private, throwaway PostgreSQL cluster
# (scripts/lib-pgcluster.sh: Unix socket only, removed on exit; never the machine's own server)
# with pg-template snapshots and a SQL health check of $MEASUREMENTS measurements, so every run
# carries what real runs carry (transitions, measurements, events). The promotion loop adds a
# migration, records the release (POST /v1/releases) and promotes dev (POST /v1/promotions),
# waits for the run to end, and starts again. Once $SEED_RUNS runs exist, the loop keeps
# running while examples/api_clients.rs (closed loop: each client sends its next request when
# the previous answer's body is read) loads each path at each level of $CLIENTS: $WARMUP s
# unrecorded, then $DURATION s recorded. The report gives p50/p90/p99/max latency, the mean
# body size and the request rate per (path, clients), and the size of one default page of
# /v1/runs.
#
# Usage: bash scripts/bench-runs.sh [--keep]
#
# Environment:
#   SEED_RUNS     runs to create before measuring (default 50)
#   MEASUREMENTS  health measurements per run, 10 ms apart (default 20)
#   CLIENTS       concurrency levels (default "4 64")
#   DURATION      recorded seconds per path and level (default 10)
#   WARMUP        unrecorded seconds before each (default 2)
#   THREADS       worker threads of the load generator (default 1)
#   SLUICE_BIN    use this sluice binary, API_CLIENTS_BIN this generator, instead of building
#                 both (cargo build --release --bin sluice, then --example api_clients)
set -euo pipefail

keep=0
for arg in "$@"; do
    case "$arg" in
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
seed=${SEED_RUNS:-50}
measurements=${MEASUREMENTS:-20}
clients=${CLIENTS:-4 64}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
threads=${THREADS:-1}
for pair in "SEED_RUNS=$seed" "MEASUREMENTS=$measurements" "THREADS=$threads"; do
    if ! [[ ${pair#*=} =~ ^[1-9][0-9]*$ ]]; then
        echo "${pair%%=*} must be a positive integer, got '${pair#*=}'" >&2
        exit 2
    fi
done
for c in $clients; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || {
        echo "CLIENTS must list positive integers, got '$clients'" >&2
        exit 2
    }
done
for tool in curl jq; do
    command -v "$tool" >/dev/null || {
        echo "$tool is needed" >&2
        exit 1
    }
done

# --- binaries ------------------------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir
if [[ -z ${SLUICE_BIN:-} || -z ${API_CLIENTS_BIN:-} ]]; then
    # Two invocations, as in bench-api.sh: the example enables dev-dependency features that the
    # shipped daemon must not be built with.
    echo "building (cargo build --release --bin sluice; cargo build --release --example api_clients) ..." >&2
    (cd "$repo" && cargo build --release --quiet --bin sluice)
    (cd "$repo" && cargo build --release --quiet --example api_clients)
fi
sluice_bin=${SLUICE_BIN:-$target_dir/release/sluice}
load_bin=${API_CLIENTS_BIN:-$target_dir/release/examples/api_clients}
for bin in "$sluice_bin" "$load_bin"; do
    [[ -x $bin ]] || {
        echo "not an executable: $bin" >&2
        exit 1
    }
done

# --- the private cluster and the project, cleaned up on exit -------------------------------
PGC_LOG_PREFIX=bench-runs
# shellcheck source=scripts/lib-pgcluster.sh
source "$repo/scripts/lib-pgcluster.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-runs.XXXXXX")
daemon_pid=""
loop_pid=""
stop_all() {
    local i
    if [[ -n $loop_pid ]]; then
        kill "$loop_pid" 2>/dev/null || true
        wait "$loop_pid" 2>/dev/null || true
    fi
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ $keep == 0 ]]; then
        rm -rf "$work"
    else
        echo "kept: $work" >&2
    fi
}
PGC_EXTRA_CLEANUP=stop_all
pgc_start

project=$work/project
mkdir -p "$project/environments" "$project/policies" "$project/migrations"
printf 'provider = "postgresql"\n' >"$project/migrations/migration_lock.toml"
add_migration() {
    local dir
    dir=$project/migrations/$(printf '2024%010d_m%d' "$1" "$1")
    mkdir -p "$dir"
    printf 'CREATE TABLE m%d (id int);\n' "$1" >"$dir/migration.sql"
    printf 'DROP TABLE m%d;\n' "$1" >"$dir/down.sql"
}
add_migration 0
env_args=()
for env in dev staging prod; do
    pgc_create_db "bench_$env"
    upper=$(tr '[:lower:]' '[:upper:]' <<<"$env")
    env_args+=("BENCH_URL_$upper=$(pgc_url "bench_$env")")
    cat >"$project/environments/$env.toml" <<EOF
url_env = "BENCH_URL_$upper"
lock_timeout = "5s"

[snapshot]
provider = "pg-template"

[snapshot.retention]
keep_last = 3

[[health]]
name = "catalog-answers"
kind = "sql"
query = "SELECT count(*) FROM pg_class WHERE relname = 'm0'"
expect = 1
count = $measurements
interval = "10ms"
EOF
done
printf 'environment = "dev"\n' >"$project/policies/dev.toml"
printf 'environment = "staging"\nfrom = "dev"\nauto_promote = false\n' >"$project/policies/staging.toml"
printf 'environment = "prod"\nfrom = "staging"\nauto_promote = false\n' >"$project/policies/prod.toml"
token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
token_hash=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
cat >"$project/tokens.toml" <<EOF
[[token]]
name = "bench"
sha256 = "$token_hash"
roles = { "*" = "admin" }
EOF
cat >"$project/sluice.toml" <<EOF
migrations = "migrations"
state_dir = ".sluice"

[daemon]
tokens_file = "tokens.toml"
watch_interval = "0s"
EOF

# --- the daemon ----------------------------------------------------------------------------
(cd "$project" && exec env "${env_args[@]}" "$sluice_bin" serve --listen 127.0.0.1:0) \
    >"$work/serve.out" 2>"$work/serve.log" &
daemon_pid=$!
addr=""
for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's#^sluice serving on http://##p' "$work/serve.log" | head -n 1)
    [[ -n $addr ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || {
        echo "sluice serve exited:" >&2
        tail -n 30 "$work/serve.log" >&2
        exit 1
    }
    sleep 0.05
done
[[ -n $addr ]] || {
    echo "sluice serve did not report its address:" >&2
    tail -n 30 "$work/serve.log" >&2
    exit 1
}
base=http://$addr
api() {
    local method=$1 path=$2 body=${3:-}
    curl -sS -X "$method" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        ${body:+--data "$body"} "$base$path"
}

# --- the promotion loop --------------------------------------------------------------------
# One promotion of dev at a time: a new migration, its release, the run, then the next.
promotion_loop() {
    local i=1 id state
    while :; do
        add_migration "$i"
        api POST /v1/releases >/dev/null
        id=$(api POST /v1/promotions '{"to": "dev", "reason": "bench"}' | jq -r '.[0].id // empty')
        if [[ -z $id ]]; then
            sleep 0.2
            continue
        fi
        while :; do
            state=$(api GET "/v1/runs/$id" | jq -r '.state.name')
            case $state in
                succeeded | rolled_back | halted | cancelled | rejected) break ;;
            esac
            sleep 0.05
        done
        i=$((i + 1))
    done
}
promotion_loop >"$work/loop.log" 2>&1 &
loop_pid=$!

count_runs() { api GET '/v1/runs?limit=500' | jq 'length'; }
echo "daemon pid $daemon_pid on $base; seeding $seed runs with the promotion loop ..." >&2
while (($(count_runs) < seed)); do
    kill -0 "$loop_pid" 2>/dev/null || {
        echo "the promotion loop died:" >&2
        tail -n 20 "$work/loop.log" >&2
        exit 1
    }
    sleep 1
done
page_bytes=$(api GET /v1/runs | wc -c)
page_runs=$(api GET /v1/runs | jq 'length')

# --- the load ------------------------------------------------------------------------------
level_args=()
for c in $clients; do level_args+=(--clients "$c"); done
echo "load: ${warmup} s warm-up + ${duration} s recorded per path and level, clients: $clients" >&2
out=$(API_LOAD_TOKEN=$token "$load_bin" --base "$base" --path /v1/runs --path /v1/environments \
    "${level_args[@]}" --duration "$duration" --warmup "$warmup" --threads "$threads") || {
    echo "load generator failed: $out" >&2
    exit 1
}
runs_total=$(count_runs)
kill "$loop_pid" 2>/dev/null || true
wait "$loop_pid" 2>/dev/null || true
loop_pid=""

# --- report --------------------------------------------------------------------------------
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
echo
echo "sluice $("$sluice_bin" --version 2>/dev/null | awk '{ print $NF }'), $(nproc) CPUs; a promotion loop ran throughout ($runs_total runs at the end)"
echo "GET /v1/runs (default page): $page_runs runs, $page_bytes bytes"
echo
row='%-18s %7s %8s %6s %8s %8s %8s %8s %9s %8s\n'
printf "$row" path clients requests errors "p50 ms" "p90 ms" "p99 ms" "max ms" "bytes" "req/s"
while IFS= read -r line; do
    [[ -n $line ]] || continue
    printf "$row" "$(field path "$line")" "$(field clients "$line")" "$(field requests "$line")" \
        "$(field errors "$line")" "$(field p50_ms "$line")" "$(field p90_ms "$line")" \
        "$(field p99_ms "$line")" "$(field max_ms "$line")" "$(field bytes "$line")" \
        "$(field rate "$line")"
done <<<"$out"
