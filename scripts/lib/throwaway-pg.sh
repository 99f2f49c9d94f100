# Sourced by the benchmark scripts: a private PostgreSQL 15 cluster under $1, run as the
# postgres user, on a free loopback port. Sets PGDATA, PGPORT, PSQL (an array: psql as
# postgres with ON_ERROR_STOP) and DB (a URL to the database "fastpatch"). Extra
# arguments are server settings (`-c name=value ...`). Stop it with throwaway_pg_stop.
PG_BIN=/usr/lib/postgresql/15/bin
throwaway_pg_start() { # work-dir [-c setting=value ...]
    local work="$1"; shift
    [ -x "$PG_BIN/initdb" ] || { echo "needs PostgreSQL 15 (Debian postgresql-15)" >&2; return 1; }
    PGDATA="$work/pg"
    mkdir -p "$work/sock"
    chown -R postgres:postgres "$work"
    runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres --no-sync -D "$PGDATA" >/dev/null
    PGPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -w -D "$PGDATA" -l "$work/pg.log" \
        -o "-p $PGPORT -k $work/sock -c listen_addresses=127.0.0.1 $*" start >/dev/null
    PSQL=(runuser -u postgres -- "$PG_BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -q)
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE fastpatch"
    DB="postgres://postgres@127.0.0.1:$PGPORT/fastpatch"
}
throwaway_pg_stop() {
    [ -n "${PGDATA:-}" ] && [ -f "$PGDATA/postmaster.pid" ] &&
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
}
