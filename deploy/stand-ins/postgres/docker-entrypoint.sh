#!/usr/bin/env bash
# Entrypoint of the PostgreSQL stand-in: the part of the official image's entrypoint this
# project and testcontainers rely on.
#   - Arguments starting with '-' are given to `postgres` (`-c fsync=off`).
#   - Started as root: makes PGDATA the postgres user's and runs itself again as that user.
#   - An empty PGDATA is initialised: initdb with POSTGRES_USER (postgres) and
#     POSTGRES_PASSWORD (required), password authentication from any address, then a
#     temporary server on the Unix socket only (its log on stdout) creates POSTGRES_DB and
#     runs /docker-entrypoint-initdb.d/*.sql and *.sh, and stops.
#   - Then the server itself (its log on stderr). Both print "database system is ready to
#     accept connections", once on stdout and once on stderr: testcontainers waits for both.
set -Eeuo pipefail

if [[ "${1:0:1}" == '-' ]]; then
    set -- postgres "$@"
fi

if [[ "$1" == postgres && "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    find "$PGDATA" ! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ "$1" == postgres && ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        echo "Error: the database is uninitialised and POSTGRES_PASSWORD is not set." >&2
        exit 1
    fi
    POSTGRES_USER="${POSTGRES_USER:-postgres}"
    POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as upstream.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    shift
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -w start \
        -o "$(printf '%q ' "$@" -c listen_addresses='' -p 5432)"
    psql_run=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [[ "$POSTGRES_DB" != postgres ]]; then
        exists="$("${psql_run[@]}" --dbname postgres -tA -v db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")"
        if [[ -z "$exists" ]]; then
            "${psql_run[@]}" --dbname postgres -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
        fi
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) echo "$0: running $f"; "${psql_run[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sh) echo "$0: running $f"; bash "$f" ;;
            */\*) ;;
            *) echo "$0: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
    set -- postgres "$@"
fi

exec "$@"
