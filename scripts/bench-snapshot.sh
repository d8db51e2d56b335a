#!/usr/bin/env bash
# Benchmark: pg-template snapshot and restore of a ~1 GB database (pgbench tables) with
# `sluice snapshot` / `sluice restore`, next to `pg_dump -Fc | pg_restore` of the same database,
# measured in the same run. Prints each time and the ratios.
#
# Usage: bash scripts/bench-snapshot.sh
#
# Environment:
#   SLUICE_BENCH_PG  libpq URL of a server where this may CREATE/DROP DATABASE
#                    (default postgres://postgres@127.0.0.1:5432/postgres); it creates and drops
#                    databases named sluice_bench_snap*.
#   SCALE            pgbench scale factor (default 68, about 1 GB)
#   SLUICE_BIN       sluice binary (default: cargo build --release, target/release/sluice)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
admin_url=${SLUICE_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
scale=${SCALE:-68}
base=${admin_url%%\?*}
server=${base%/*}
db=sluice_bench_snap
copy_db=sluice_bench_snap_dumpcopy
export PGCONNECT_TIMEOUT=10

if [ -n "${SLUICE_BIN:-}" ]; then
    sluice=$SLUICE_BIN
else
    (cd "$repo" && cargo build --release --quiet)
    sluice=$repo/target/release/sluice
fi

psql_admin() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$admin_url" "$@"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-snap.XXXXXX")
cleanup() {
    for d in "$db" "$copy_db" $(psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE 'sluice\_bench\_snap\_%'" 2>/dev/null); do
        psql_admin -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_dbs_first() { cleanup; mkdir -p "$work"; }
cleanup_dbs_first

now() { date +%s%N; }
secs() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 1e9 }'; }

echo "creating $db with pgbench scale $scale ..." >&2
psql_admin -c "CREATE DATABASE $db"
pgbench -i -q -s "$scale" -d "$server/$db" >/dev/null 2>&1
size=$(psql_admin -c "SELECT pg_size_pretty(pg_database_size('$db'))")
bytes=$(psql_admin -c "SELECT pg_database_size('$db')")
psql_admin -c "CHECKPOINT" >/dev/null

mkdir -p "$work/environments" "$work/migrations"
printf 'migrations = "migrations"\nstate_dir = ".sluice"\n' >"$work/sluice.toml"
printf 'url_env = "SLUICE_BENCH_URL"\n[snapshot]\nprovider = "pg-template"\n' >"$work/environments/bench.toml"
export SLUICE_BENCH_URL="$server/$db"
run=0b0e0c0a-0000-4000-8000-000000000001

t0=$(now)
(cd "$work" && "$sluice" snapshot --env bench --run "$run" --reason benchmark >/dev/null)
t1=$(now)
snap=$(psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE '${db}\_snap\_%'")
(cd "$work" && "$sluice" restore --env bench "$snap" --run "$run" --reason benchmark >/dev/null)
t2=$(now)

psql_admin -c "CREATE DATABASE $copy_db"
t3=$(now)
pg_dump -Fc -d "$server/$db" | pg_restore --no-owner -d "$server/$copy_db"
t4=$(now)

snapshot_ns=$((t1 - t0))
restore_ns=$((t2 - t1))
dump_ns=$((t4 - t3))
printf '\ndatabase: %s (%s bytes), PostgreSQL %s\n\n' "$size" "$bytes" "$(psql_admin -c 'SHOW server_version')"
printf '%-40s %10s\n' "operation" "seconds"
printf '%-40s %10s\n' "----------------------------------------" "----------"
printf '%-40s %10s\n' "sluice snapshot (pg-template)" "$(secs $snapshot_ns)"
printf '%-40s %10s\n' "sluice restore (pg-template, renames)" "$(secs $restore_ns)"
printf '%-40s %10s\n' "pg_dump -Fc | pg_restore" "$(secs $dump_ns)"
printf '\nsnapshot / dump+restore: %s\n' "$(awk -v a=$snapshot_ns -v b=$dump_ns 'BEGIN { printf "%.3f", a / b }')"
printf 'snapshot+restore / dump+restore: %s\n' "$(awk -v a=$((snapshot_ns + restore_ns)) -v b=$dump_ns 'BEGIN { printf "%.3f", a / b }')"
