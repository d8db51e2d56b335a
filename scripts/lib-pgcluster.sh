# shellcheck shell=bash
# Sourced by scripts/drift-vs-migra.sh and scripts/bench-diff.sh: a private, throwaway
# PostgreSQL cluster and the corpus databases built on it. Never touches the machine's own
# server: the cluster lives in a fresh directory under /tmp, listens only on a Unix socket in
# that directory (no TCP), uses trust authentication for the `postgres` role, and is stopped
# and deleted when the sourcing script exits (pgc_start installs the EXIT trap).
#
# The server binaries come from ${SLUICE_PG_BINDIR:-the newest /usr/lib/postgresql/*/bin},
# falling back to initdb/pg_ctl on PATH. As root, initdb and the server run as the `postgres`
# user (or `nobody`) through setpriv, the way tests/common/mod.rs starts its cluster: they
# refuse to run as root.
#
# After pgc_start:
#   PGC_DIR      the cluster's directory (data/, server.log, the socket)
#   PGC_PORT     the port number in the socket's name (.s.PGSQL.<port>)
#   PGC_BINDIR   where initdb/pg_ctl/psql were taken from
#   pgc_psql DB [psql args…]      psql -X -q -v ON_ERROR_STOP=1 on database DB
#   pgc_url DB                    postgres://postgres@localhost:PORT/DB?host=DIR (sluice, libpq)
#   pgc_sa_url DB                 the same for SQLAlchemy/psycopg2 (migra)
#   pgc_create_db DB [TEMPLATE]   CREATE DATABASE (from template0 unless TEMPLATE is given)
#   pgc_apply_migrations DB FILE… each migration.sql in one psql session, in the given order
#   pgc_corpus_files DIR          sets CORPUS_FILES: DIR/*/migration.sql in byte-wise order
#   pgc_corpus_pair LAG LAGGING FULL  creates LAGGING (all of CORPUS_FILES but the last LAG)
#                                 and FULL (all of them)

pgc_log() { echo "${PGC_LOG_PREFIX:-pgcluster}: $*" >&2; }

# The directory holding initdb, pg_ctl and psql.
pgc_find_bindir() {
    if [ -n "${SLUICE_PG_BINDIR:-}" ]; then
        [ -x "$SLUICE_PG_BINDIR/initdb" ] || {
            pgc_log "SLUICE_PG_BINDIR=$SLUICE_PG_BINDIR has no initdb"
            return 1
        }
        echo "$SLUICE_PG_BINDIR"
        return 0
    fi
    local newest="" best=-1 d v
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        v="$(basename "$(dirname "$d")")"
        v="${v%%.*}"
        [[ $v =~ ^[0-9]+$ ]] || continue
        if [ "$v" -gt "$best" ]; then
            best="$v"
            newest="$d"
        fi
    done
    if [ -n "$newest" ]; then
        echo "$newest"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    pgc_log "no PostgreSQL server binaries (initdb, pg_ctl): install postgresql or set SLUICE_PG_BINDIR"
    return 1
}

# A port nobody listens on over TCP, so the socket name cannot collide with a server that
# someone later starts with TCP on the same number. The cluster itself listens on no TCP port.
pgc_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

PGC_DIR=""
PGC_AS=()
PGC_EXTRA_CLEANUP=""

pgc_stop() {
    [ -n "$PGC_DIR" ] || return 0
    if [ -f "$PGC_DIR/data/postmaster.pid" ]; then
        "${PGC_AS[@]}" "$PGC_BINDIR/pg_ctl" -D "$PGC_DIR/data" -m immediate -w stop \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$PGC_DIR"
    PGC_DIR=""
}

pgc_on_exit() {
    local rc=$?
    if [ -n "$PGC_EXTRA_CLEANUP" ]; then
        eval "$PGC_EXTRA_CLEANUP" || true
    fi
    pgc_stop
    exit "$rc"
}

pgc_start() {
    PGC_BINDIR="$(pgc_find_bindir)" || return 1
    command -v python3 >/dev/null 2>&1 || { pgc_log "python3 is needed"; return 1; }
    # Short path: a Unix socket path must stay under ~107 bytes.
    PGC_DIR="$(mktemp -d /tmp/sluice-pgc-XXXXXX)"
    trap pgc_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    PGC_AS=()
    if [ "$(id -u)" -eq 0 ]; then
        local user=""
        for u in postgres nobody; do
            if id -u "$u" >/dev/null 2>&1; then
                user="$u"
                break
            fi
        done
        [ -n "$user" ] || {
            pgc_log "running as root and there is neither a postgres nor a nobody user to run the server as"
            return 1
        }
        command -v setpriv >/dev/null 2>&1 || { pgc_log "setpriv (util-linux) is needed as root"; return 1; }
        chown "$user:$(id -g "$user")" "$PGC_DIR"
        PGC_AS=(setpriv "--reuid=$(id -u "$user")" "--regid=$(id -g "$user")" --init-groups)
    fi
    PGC_PORT="$(pgc_free_port)"
    if ! "${PGC_AS[@]}" "$PGC_BINDIR/initdb" -D "$PGC_DIR/data" -A trust -U postgres \
        --no-sync -E UTF8 --locale=C >"$PGC_DIR/initdb.log" 2>&1; then
        pgc_log "initdb failed:"
        cat "$PGC_DIR/initdb.log" >&2
        return 1
    fi
    # Durability off: these databases are rebuilt from the corpus every run.
    if ! "${PGC_AS[@]}" "$PGC_BINDIR/pg_ctl" -D "$PGC_DIR/data" -l "$PGC_DIR/server.log" -w \
        -t 60 -o "-k $PGC_DIR -p $PGC_PORT -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null; then
        pgc_log "the server did not start; its log:"
        cat "$PGC_DIR/server.log" >&2 || true
        return 1
    fi
    pgc_log "PostgreSQL $("$PGC_BINDIR/postgres" -V | awk '{print $3}') in $PGC_DIR (socket .s.PGSQL.$PGC_PORT)"
}

pgc_psql() {
    local db=$1
    shift
    PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" \
        "$PGC_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGC_DIR" -p "$PGC_PORT" -U postgres \
        -d "$db" "$@"
}

pgc_url() { echo "postgres://postgres@localhost:$PGC_PORT/$1?host=$PGC_DIR"; }
pgc_sa_url() { echo "postgresql+psycopg2://postgres@/$1?host=$PGC_DIR&port=$PGC_PORT"; }

pgc_create_db() {
    local db=$1 template=${2:-template0}
    pgc_psql postgres -c "CREATE DATABASE \"$db\" TEMPLATE \"$template\""
}

# Applies the files in order in one psql session, each with `\i`, in autocommit mode (each
# statement commits on its own, so files with CREATE INDEX CONCURRENTLY or their own
# BEGIN/COMMIT work unchanged). Stops at the first error.
pgc_apply_migrations() {
    local db=$1 f q
    shift
    {
        for f in "$@"; do
            q=${f//\'/\'\'}
            printf "\\i '%s'\n" "$q"
        done
    } | pgc_psql "$db" -f - >/dev/null
}

# Sets CORPUS_FILES to the corpus's migration.sql files in byte-wise folder order (the order
# sluice and Prisma apply them in).
pgc_corpus_files() {
    mapfile -t CORPUS_FILES < <(LC_ALL=C find "$1" -mindepth 2 -maxdepth 2 -name migration.sql | LC_ALL=C sort)
}

# The pair of databases: LAGGING gets all of CORPUS_FILES except the last LAG, FULL is a copy
# of LAGGING (CREATE DATABASE … TEMPLATE) plus the last LAG, which is the same schema as
# applying all of them in order, for half the work. psql's errors go to stderr.
pgc_corpus_pair() {
    local lag=$1 lagging=$2 full=$3 n=${#CORPUS_FILES[@]}
    if [ "$n" -le "$lag" ]; then
        pgc_log "the corpus has $n migrations, not more than $lag"
        return 1
    fi
    pgc_create_db "$lagging" || return 1
    pgc_apply_migrations "$lagging" "${CORPUS_FILES[@]:0:n-lag}" || return 1
    pgc_create_db "$full" "$lagging" || return 1
    pgc_apply_migrations "$full" "${CORPUS_FILES[@]:n-lag}" || return 1
}
