#!/usr/bin/env bash
# Benchmark: time from a Slack slash command to its 200 reply when 50 arrive at once.
#
# `sluice serve` runs the shipped example project (SQLite environments) with `[slack]`
# configured (a signing secret made up for the run, one Slack user mapped as admin, no bot
# token, so nothing is posted anywhere). examples/slack_load.rs then sends bursts of
# $CONCURRENCY correctly signed, distinct slash commands at the same instant and records, for
# each, the time from the burst's start to the end of the reply. Series, in this order:
#   GET /v1/health           baseline, same burst shape (no signature, one store read)
#   /sluice status           verify + replay guard (one sled insert, flushed) + a store read
#   /sluice runs dev         the same with a run listing
#   /sluice promote dev      verify + request a promotion (first one creates the run, the
#                            rest answer "already brings dev to release …")
#   /sluice plan prod        verify + connect to the SQLite target and plan
# Ratios against the baseline are printed. The example is promoted to staging first
# (`sluice promote --to staging --local`) so prod has something to plan.
#
# Usage: bash scripts/bench-slack.sh [--keep]
# Environment: CONCURRENCY (default 50), BURSTS (recorded bursts per series, default 10),
#   SLUICE_BIN / SLACK_LOAD_BIN to skip the release builds.
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
concurrency=${CONCURRENCY:-50}
bursts=${BURSTS:-10}
if ! [[ $concurrency =~ ^[1-9][0-9]*$ && $bursts =~ ^[1-9][0-9]*$ ]]; then
    echo "CONCURRENCY and BURSTS must be positive integers" >&2
    exit 2
fi

target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir
if [[ -z ${SLUICE_BIN:-} || -z ${SLACK_LOAD_BIN:-} ]]; then
    echo "building (cargo build --release --bin sluice; --example slack_load) ..." >&2
    (cd "$repo" && cargo build --release --quiet --bin sluice)
    (cd "$repo" && cargo build --release --quiet --example slack_load)
fi
sluice_bin=${SLUICE_BIN:-$target_dir/release/sluice}
load_bin=${SLACK_LOAD_BIN:-$target_dir/release/examples/slack_load}

work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-slack.XXXXXX")
daemon_pid=""
cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ $keep == 0 ]]; then rm -rf "$work"; else echo "kept: $work" >&2; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

project=$work/project
mkdir -p "$project"
cp "$repo/sluice.toml" "$project/"
cp -R "$repo/environments" "$repo/policies" "$repo/migrations" "$project/"
rm -rf "$project/.sluice"
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >>"$project/sluice.toml" <<SLACKCONF

[slack]
signing_secret_env = "BENCH_SLACK_SECRET"

[slack.users.U0BENCH]
name = "bench"
roles = { "*" = "admin" }
SLACKCONF

(cd "$project" && "$sluice_bin" promote --to staging --local >"$work/promote.log" 2>&1) || {
    echo "sluice promote --to staging --local failed:" >&2
    tail -n 30 "$work/promote.log" >&2
    exit 1
}

(cd "$project" && BENCH_SLACK_SECRET=$secret exec "$sluice_bin" serve --listen 127.0.0.1:0) \
    >"$work/serve.out" 2>"$work/serve.log" &
daemon_pid=$!
addr=""
for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's#^sluice serving on http://##p' "$work/serve.log" | head -n 1)
    [[ -n $addr ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || {
        tail -n 30 "$work/serve.log" >&2
        exit 1
    }
    sleep 0.05
done
[[ -n $addr ]] || {
    echo "sluice serve did not start" >&2
    exit 1
}

out=$(SLACK_LOAD_SECRET=$secret "$load_bin" --base "http://$addr" --concurrency "$concurrency" \
    --bursts "$bursts" --text "status" --text "runs dev" --text "promote dev" --text "plan prod")

field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
base_line=$(head -n 1 <<<"$out")
echo
echo "sluice $("$sluice_bin" --version | awk '{ print $NF }'), $(nproc) CPUs; $concurrency concurrent requests per burst, $bursts bursts"
row='%-22s %6s %6s %8s %8s %8s %8s %10s %10s\n'
printf "$row" series sent errors "p50 ms" "p90 ms" "p99 ms" "max ms" "p50/base" "p99/base"
errors=0
while IFS= read -r line; do
    [[ -n $line ]] || continue
    printf "$row" "$(field series "$line" | tr _ ' ')" "$(field sent "$line")" "$(field errors "$line")" \
        "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
        "$(ratio "$(field p50_ms "$line")" "$(field p50_ms "$base_line")")" \
        "$(ratio "$(field p99_ms "$line")" "$(field p99_ms "$base_line")")"
    errors=$((errors + $(field errors "$line")))
done <<<"$out"
((errors == 0)) || {
    echo "WARNING: $errors request(s) failed" >&2
    exit 1
}
