#!/usr/bin/env bash
# Benchmark: the HTTP API of `sluice serve` with the shipped example project loaded.
#   (1) memory: VmRSS / VmHWM of the daemon after start and $IDLE seconds idle, and again
#       after the load;
#   (2) latency: p50/p90/p99/max of `GET /v1/environments` under an open-loop, fixed-rate load
#       ($RATE req/s) from a second process (examples/api_load.rs) on loopback, against a
#       baseline measured in the same run with the same load and the same headers:
#       `GET /v1/health` (no authentication, one key read from the store). The ratios
#       environments / health are printed next to the absolute figures.
#
# The example project (sluice.toml, environments/, policies/, migrations/) is copied to a
# temporary directory with a tokens file (one viewer token, made up for the run) and a
# `[daemon]` section; `sluice promote --to prod --local` runs there once first so every
# environment has a release and the store holds runs. The repository's own .sluice/ is never
# touched. The daemon is stopped and the directory removed on exit.
#
# Each round loads both paths one after the other ($WARMUP s unrecorded, then $DURATION s
# recorded, each); the order alternates between rounds (round 1: health first).
#
# Usage: bash scripts/bench-api.sh [--keep]
#
# Environment:
#   RATE         requests per second (default 300)
#   DURATION     recorded seconds per path and round (default 10)
#   WARMUP       unrecorded warm-up seconds per path and round (default 2)
#   ROUNDS       rounds (default 2)
#   IDLE         seconds the daemon sits idle before the idle memory reading (default 5)
#   THREADS      worker threads of the load generator (default 1)
#   PIN          1: pin the daemon to CPU 0 and the generator to CPU 1 with taskset (default 0)
#   SLUICE_BIN   use this sluice binary, API_LOAD_BIN this generator, instead of building
#                both (cargo build --release --bin sluice, then --example api_load)
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
rate=${RATE:-300}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
rounds=${ROUNDS:-2}
idle=${IDLE:-5}
threads=${THREADS:-1}
pin=${PIN:-0}

number='^[0-9]+([.][0-9]+)?$'
for pair in "RATE=$rate" "DURATION=$duration" "WARMUP=$warmup" "IDLE=$idle"; do
    if ! [[ ${pair#*=} =~ $number ]]; then
        echo "${pair%%=*} must be a number, got '${pair#*=}'" >&2
        exit 2
    fi
done
if ! [[ $rounds =~ ^[1-9][0-9]*$ && $threads =~ ^[1-9][0-9]*$ ]]; then
    echo "ROUNDS and THREADS must be positive integers" >&2
    exit 2
fi

# --- binaries ------------------------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir
if [[ -z ${SLUICE_BIN:-} || -z ${API_LOAD_BIN:-} ]]; then
    # Two invocations on purpose: building the example enables the dev-dependencies' features
    # (reqwest's `blocking`), and in the same invocation the daemon would be built with them too,
    # i.e. not the binary `cargo build --release` ships.
    echo "building (cargo build --release --bin sluice; cargo build --release --example api_load) ..." >&2
    (cd "$repo" && cargo build --release --quiet --bin sluice)
    (cd "$repo" && cargo build --release --quiet --example api_load)
fi
sluice_bin=${SLUICE_BIN:-$target_dir/release/sluice}
load_bin=${API_LOAD_BIN:-$target_dir/release/examples/api_load}
for bin in "$sluice_bin" "$load_bin"; do
    [[ -x $bin ]] || {
        echo "not an executable: $bin" >&2
        exit 1
    }
done

daemon_cmd=("$sluice_bin")
load_cmd=("$load_bin")
if [[ $pin == 1 ]]; then
    daemon_cmd=(taskset -c 0 "$sluice_bin")
    load_cmd=(taskset -c 1 "$load_bin")
fi

# --- temporary project, cleaned up on exit -------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-api.XXXXXX")
daemon_pid=""

cleanup() {
    local status=$? i
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

token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
token_hash=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
cat >"$project/tokens.toml" <<EOF
[[token]]
name = "bench"
sha256 = "$token_hash"
roles = { "*" = "viewer" }
EOF
printf '\n[daemon]\ntokens_file = "tokens.toml"\n' >>"$project/sluice.toml"

echo "promoting the example to prod (sluice promote --to prod --local) ..." >&2
if ! (cd "$project" && SLUICE_ACTOR=bench "$sluice_bin" promote --to prod --local) \
    >"$work/promote.log" 2>&1; then
    echo "sluice promote --to prod --local failed:" >&2
    tail -n 30 "$work/promote.log" >&2
    exit 1
fi

# --- the daemon ----------------------------------------------------------------------------
(cd "$project" && exec "${daemon_cmd[@]}" serve --listen 127.0.0.1:0) >"$work/serve.out" 2>"$work/serve.log" &
daemon_pid=$!
addr=""
for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's#^sluice serving on http://##p' "$work/serve.log" | head -n 1)
    [[ -n $addr ]] && break
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "sluice serve exited:" >&2
        tail -n 30 "$work/serve.log" >&2
        exit 1
    fi
    sleep 0.05
done
if [[ -z $addr ]]; then
    echo "sluice serve did not report its address within 10 s:" >&2
    tail -n 30 "$work/serve.log" >&2
    exit 1
fi
base=http://$addr

# status_kb FIELD: a field of /proc/<daemon>/status, in kB.
status_kb() {
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$daemon_pid/status"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

sleep "$idle"
kill -0 "$daemon_pid" 2>/dev/null || {
    echo "sluice serve died while idle:" >&2
    tail -n 30 "$work/serve.log" >&2
    exit 1
}
idle_rss=$(status_kb VmRSS)
idle_hwm=$(status_kb VmHWM)
threads_daemon=$(status_kb Threads)

# --- the load ------------------------------------------------------------------------------
echo "daemon pid $daemon_pid on $base; idle RSS $(mib "$idle_rss") MiB" >&2
echo "load: $rate req/s, ${warmup} s warm-up + ${duration} s recorded per path, $rounds round(s)" >&2
results=()
for ((r = 1; r <= rounds; r++)); do
    if ((r % 2 == 1)); then
        order=(--path /v1/health --path /v1/environments)
    else
        order=(--path /v1/environments --path /v1/health)
    fi
    if ! out=$(API_LOAD_TOKEN=$token "${load_cmd[@]}" --base "$base" "${order[@]}" \
        --rate "$rate" --duration "$duration" --warmup "$warmup" --threads "$threads"); then
        echo "load generator failed (round $r)" >&2
        exit 1
    fi
    while IFS= read -r line; do
        [[ -n $line ]] && results+=("round=$r $line")
    done <<<"$out"
done

kill -0 "$daemon_pid" 2>/dev/null || {
    echo "sluice serve died under load:" >&2
    tail -n 30 "$work/serve.log" >&2
    exit 1
}
load_rss=$(status_kb VmRSS)
load_hwm=$(status_kb VmHWM)

# --- report --------------------------------------------------------------------------------
# field NAME LINE: the value of NAME= in a result line.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "sluice $("$sluice_bin" --version 2>/dev/null | awk '{ print $NF }'), $(nproc) CPUs, pin=$pin; daemon threads: $threads_daemon"
echo
printf '%-22s %10s %10s\n' "memory (MiB)" "VmRSS" "VmHWM"
printf '%-22s %10s %10s\n' "idle (${idle} s after start)" "$(mib "$idle_rss")" "$(mib "$idle_hwm")"
printf '%-22s %10s %10s\n' "after the load" "$(mib "$load_rss")" "$(mib "$load_hwm")"
echo
row='%-5s %-18s %6s %6s %8s %8s %8s %8s %8s %8s %7s %7s\n'
printf "$row" round path sent errors "p50 ms" "p90 ms" "p99 ms" "max ms" \
    "svc p50" "svc p99" "rate/s" "lag ms"
for line in "${results[@]}"; do
    printf "$row" \
        "$(field round "$line")" "$(field path "$line")" "$(field sent "$line")" \
        "$(field errors "$line")" "$(field p50_ms "$line")" "$(field p90_ms "$line")" \
        "$(field p99_ms "$line")" "$(field max_ms "$line")" "$(field svc_p50_ms "$line")" \
        "$(field svc_p99_ms "$line")" "$(field rate "$line")" "$(field send_lag_max_ms "$line")"
done
echo
echo "ratio /v1/environments / /v1/health:"
row='%-5s %8s %8s %8s %8s %8s\n'
printf "$row" round p50 p90 p99 "svc p50" "svc p99"
total_errors=0
for ((r = 1; r <= rounds; r++)); do
    env_line="" health_line=""
    for line in "${results[@]}"; do
        [[ $(field round "$line") == "$r" ]] || continue
        case $(field path "$line") in
            /v1/environments) env_line=$line ;;
            /v1/health) health_line=$line ;;
        esac
        total_errors=$((total_errors + $(field errors "$line")))
    done
    cells=()
    for f in p50_ms p90_ms p99_ms svc_p50_ms svc_p99_ms; do
        cells+=("$(ratio "$(field "$f" "$env_line")" "$(field "$f" "$health_line")")")
    done
    printf "$row" "$r" "${cells[@]}"
done
if ((total_errors > 0)); then
    echo
    echo "WARNING: $total_errors request(s) failed; see the generator's messages above" >&2
    exit 1
fi
