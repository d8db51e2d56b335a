#!/usr/bin/env bash
# The random-SIGKILL trial: a real corpus promoted dev → staging → prod by `sluice serve` on a
# pg-template ladder, the daemon killed with SIGKILL at a random moment, started again, and
# left to finish. A trial passes when the ladder ends consistent: every run succeeded, each
# environment's history has one finished row per migration and nothing failed or unfinished,
# its schema is the reference schema (the corpus applied by psql), every database of the
# ladder accepts connections, no advisory lock is held and no half-made copy is left.
#
#   scripts/sigkill-trial.sh            # 20 trials on documenso
#   SIGKILL_TRIALS=5 SIGKILL_CORPUS=rallly SIGKILL_SEED=7 scripts/sigkill-trial.sh
#
# Each database starts with SIGKILL_FILL_MB (default 48) of rows in a table of its own, so a
# template copy lasts long enough for some kills to land in it (connections blocked).
#
# Runs on a private PostgreSQL cluster (scripts/lib-pgcluster.sh); uses target/debug/sluice
# (built if missing) or $SLUICE_BIN. Prints one line per trial and the tally; exits 1 when a
# trial ends inconsistent, leaving its daemon log under the printed work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib-pgcluster.sh
. scripts/lib-pgcluster.sh
PGC_LOG_PREFIX=sigkill

CORPUS=${SIGKILL_CORPUS:-documenso}
TRIALS=${SIGKILL_TRIALS:-20}
FILL_MB=${SIGKILL_FILL_MB:-48}
RANDOM=${SIGKILL_SEED:-12}
CORPORA=${SLUICE_CORPORA:-../shared/corpora}
MIGRATIONS=$(cd "$CORPORA/$CORPUS/migrations" && pwd)
SLUICE=${SLUICE_BIN:-$ROOT/target/debug/sluice}
[ -x "$SLUICE" ] || cargo build --quiet
ENVS=(dev staging prod)

pgc_start
WORK=$(mktemp -d /tmp/sluice-sigkill-XXXXXX)
echo "work directory: $WORK" >&2

# The reference schema: the corpus applied by psql, one session.
pgc_corpus_files "$MIGRATIONS"
pgc_create_db reference
pgc_apply_migrations reference "${CORPUS_FILES[@]}" >/dev/null
schema_of() {
    "$PGC_BINDIR/pg_dump" -h "$PGC_DIR" -p "$PGC_PORT" -U postgres --schema-only --no-owner \
        --exclude-table=_prisma_migrations --exclude-table=sk_fill "$1" | grep -v -E '^(--|SET |SELECT pg_catalog|\\(un)?restrict )' | sed '/^$/d'
}
schema_of reference >"$WORK/reference.sql"

PROJECT=$WORK/project
mkdir -p "$PROJECT/environments" "$PROJECT/policies"
TOKEN="slc_sigkill_trial_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
HASH=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
PORT=$(pgc_free_port)
cat >"$PROJECT/sluice.toml" <<EOF
migrations = "$MIGRATIONS"
state_dir = ".sluice"

[daemon]
listen = "127.0.0.1:$PORT"
tokens_file = "tokens.toml"
tick = "100ms"
watch_interval = "0s"
EOF
cat >"$PROJECT/tokens.toml" <<EOF
[[token]]
name = "ops"
sha256 = "$HASH"
roles = { "*" = "admin" }
EOF
for env in "${ENVS[@]}"; do
    var="SIGKILL_URL_${env^^}"
    export "$var=$(pgc_url "sk_$env")"
    printf 'url_env = "%s"\nlock_timeout = "10s"\n[snapshot]\nprovider = "pg-template"\n' "$var" \
        >"$PROJECT/environments/$env.toml"
done
printf 'environment = "dev"\n' >"$PROJECT/policies/dev.toml"
printf 'environment = "staging"\nfrom = "dev"\nauto_promote = true\n' >"$PROJECT/policies/staging.toml"
printf 'environment = "prod"\nfrom = "staging"\nauto_promote = true\n' >"$PROJECT/policies/prod.toml"
BASE="http://127.0.0.1:$PORT"

api() { curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }

fresh_ladder() {
    local db
    for db in $(pgc_psql postgres -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'sk\\_%'"); do
        pgc_psql postgres -c "ALTER DATABASE \"$db\" WITH ALLOW_CONNECTIONS true" >/dev/null
        pgc_psql postgres -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
    done
    for env in "${ENVS[@]}"; do
        pgc_create_db "sk_$env"
        pgc_psql "sk_$env" -c "CREATE TABLE sk_fill (id int, pad text); \
            INSERT INTO sk_fill SELECT g, repeat('x', 1000) FROM generate_series(1, $FILL_MB * 1000) g" >/dev/null
    done
    rm -rf "$PROJECT/.sluice"
}

DAEMON_PID=
start_daemon() {
    "$SLUICE" --project "$PROJECT" serve >>"$1" 2>&1 &
    DAEMON_PID=$!
    local i
    for i in $(seq 1 300); do
        curl -fsS "$BASE/v1/health" >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { echo "the daemon exited; see $1" >&2; return 1; }
        sleep 0.1
    done
    echo "the daemon did not start; see $1" >&2
    return 1
}
stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    kill "-$1" "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
}
PGC_EXTRA_CLEANUP='stop_daemon KILL'

# Waits until prod is on the newest release with no run left to move, or a run needs a person.
# Prints "done", "stuck: …" or "timeout".
wait_settled() {
    local deadline=$((SECONDS + $1)) envs states
    while [ $SECONDS -lt $deadline ]; do
        if envs=$(api "$BASE/v1/environments" 2>/dev/null); then
            states=$(python3 -c '
import json, sys
envs = json.loads(sys.argv[1])
stuck = [e["name"] + ": " + e["active_run"]["describe"] for e in envs
         if e.get("active_run") and e["active_run"]["state"] == "halted"]
moving = any(e.get("active_run") or e.get("waiting_runs") for e in envs)
prod = [e for e in envs if e["name"] == "prod"][0]
if stuck: print("stuck: " + "; ".join(stuck))
elif not moving and prod.get("release"): print("done")
else: print("moving")' "$envs")
            case $states in
            done) echo done; return ;;
            stuck*) echo "$states"; return ;;
            esac
        fi
        sleep 0.5
    done
    echo timeout
}

# What is wrong with the ladder now, one line per problem; nothing when it is consistent.
check_consistent() {
    local env db problems=()
    local runs
    runs=$(api "$BASE/v1/runs?limit=100") || { echo "cannot list runs"; return; }
    python3 -c '
import json, sys
runs = json.loads(sys.argv[1])
runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
for r in runs:
    name = r["state"]["name"] if isinstance(r["state"], dict) else r["state"]
    if name != "succeeded":
        print("run %s on %s is %s" % (r["id"][:8], r["environment"], name))
' "$runs"
    local expected=${#CORPUS_FILES[@]}
    for env in "${ENVS[@]}"; do
        db="sk_$env"
        local finished bad
        finished=$(pgc_psql "$db" -At -c "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL" 2>/dev/null || echo "?")
        bad=$(pgc_psql "$db" -At -c "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL" 2>/dev/null || echo "?")
        [ "$finished" = "$expected" ] || echo "$env: $finished finished migrations, expected $expected"
        [ "$bad" = "0" ] || echo "$env: $bad failed or unfinished history rows"
        schema_of "$db" >"$WORK/$env.sql" 2>/dev/null || echo "$env: cannot dump the schema"
        cmp -s "$WORK/reference.sql" "$WORK/$env.sql" || echo "$env: schema differs from the reference"
    done
    pgc_psql postgres -At -c "SELECT 'refuses connections: ' || datname FROM pg_database WHERE NOT datallowconn AND datname LIKE 'sk\\_%'"
    pgc_psql postgres -At -c "SELECT 'half-made copy: ' || datname FROM pg_database WHERE datname LIKE 'sk\\_%\\_restoring\\_%' OR datname LIKE 'sk\\_%\\_failed\\_%'"
    pgc_psql postgres -At -c "SELECT 'advisory lock held by pid ' || pid FROM pg_locks WHERE locktype = 'advisory'"
}

# Calibration: one promotion without a kill, to know how long one takes.
fresh_ladder
start_daemon "$WORK/calibration.log"
started=$(date +%s%N)
api -X POST "$BASE/v1/promotions" -d '{"to": "dev", "reason": "calibration"}' >/dev/null
outcome=$(wait_settled 600)
took_ms=$((($(date +%s%N) - started) / 1000000))
problems=$(check_consistent)
stop_daemon TERM
if [ "$outcome" != done ] || [ -n "$problems" ]; then
    echo "the uninterrupted promotion did not end consistent ($outcome): $problems" >&2
    exit 1
fi
echo "calibration: $CORPUS (${#CORPUS_FILES[@]} migrations) promoted dev → staging → prod in ${took_ms} ms"

passed=0
blocked_trials=0
for trial in $(seq 1 "$TRIALS"); do
    fresh_ladder
    log="$WORK/trial-$trial.log"
    start_daemon "$log"
    kill_at_ms=$(((RANDOM * 32768 + RANDOM) % took_ms))
    api -X POST "$BASE/v1/promotions" -d '{"to": "dev", "reason": "sigkill trial"}' >/dev/null
    sleep "$(printf '%d.%03d' $((kill_at_ms / 1000)) $((kill_at_ms % 1000)))"
    where=$(api "$BASE/v1/environments" 2>/dev/null | python3 -c '
import json, sys
try:
    envs = json.load(sys.stdin)
except Exception:
    print("?"); sys.exit()
print(", ".join("%s %s" % (e["name"], e["active_run"]["describe"][:40]) for e in envs if e.get("active_run")) or "between runs")' || echo "?")
    stop_daemon KILL
    left_blocked=$(pgc_psql postgres -At -c "SELECT count(*) FROM pg_database WHERE NOT datallowconn AND datname LIKE 'sk\\_%'")
    [ "$left_blocked" = 0 ] || where="$where; the kill left $left_blocked database(s) refusing connections"
    blocked_trials=$((blocked_trials + (left_blocked > 0 ? 1 : 0)))
    echo "--- restarted after SIGKILL at ${kill_at_ms} ms" >>"$log"
    start_daemon "$log"
    outcome=$(wait_settled 600)
    problems=$(check_consistent)
    stop_daemon TERM
    if [ "$outcome" = done ] && [ -z "$problems" ]; then
        passed=$((passed + 1))
        echo "trial $trial: killed at ${kill_at_ms} ms ($where): consistent"
    else
        echo "trial $trial: killed at ${kill_at_ms} ms ($where): $outcome"
        echo "$problems" | sed 's/^/    /'
        echo "    log: $log"
    fi
done
echo "$passed/$TRIALS trials ended consistent, every database accepting connections ($blocked_trials kills landed while a copy blocked connections)"
[ "$passed" = "$TRIALS" ]
