#!/usr/bin/env bash
# Real PostgreSQL and MariaDB servers for the migrations tier, on loopback, and PgBouncer
# in front of PostgreSQL in each of its three pool modes.
#
#   scripts/databases.sh install        install the Debian packages (no system service is started)
#   scripts/databases.sh start DIR      start the servers under DIR on free ports; writes DIR/env
#   scripts/databases.sh stop DIR       stop the servers recorded in DIR (by PID) and remove DIR
#   scripts/databases.sh restart-postgres DIR SECONDS
#                                       PostgreSQL down for SECONDS, then back on the same port
#
# With DB_EXTRA_LISTEN=ADDR and DB_EXTRA_CIDR=NET/BITS, PostgreSQL and the transaction-mode
# PgBouncer also listen on ADDR, and PostgreSQL accepts the same user from NET (the node
# tier's pods reach them on the CNI bridge's address).
#
# DIR/env exports DJANGO_MIGRATE_TEST_POSTGRES_PORT, DJANGO_MIGRATE_TEST_MARIADB_PORT,
# DJANGO_MIGRATE_TEST_PGBOUNCER_{TRANSACTION,SESSION,STATEMENT}_PORT,
# DJANGO_MIGRATE_TEST_PGBOUNCER_POOL_SIZE (server connections per database: fewer than the
# pods of a race), DJANGO_MIGRATE_TEST_DB_USER, DJANGO_MIGRATE_TEST_DB_PASSWORD and
# DJANGO_MIGRATE_TEST_DB_DIR.
#
# With DB_ROOTFS=ROOTFS (scripts/rootfs.sh), the servers are that Debian release's, run in
# it (scripts/in-rootfs.sh); later commands for the same DIR run there too.
# Both servers accept that user with that password over TCP (and reject any other password); the user may create
# databases.
set -euo pipefail

DB_USER=django
DB_PASSWORD=django-test-password
PGBOUNCER_POOL_SIZE=4

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bin() {
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] || die "PostgreSQL is not installed: run scripts/databases.sh install"
    echo "$dir"
}

install() {
    local missing=()
    for pkg in postgresql pgbouncer mariadb-server mariadb-client libmariadb-dev pkg-config; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing ${missing[*]}"
    # Keep the packages from starting their system-wide services: the tests start their
    # own servers on free ports and stop them afterwards.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        created=1
    fi
    # Another install (unattended upgrades, say) may hold the package lock: wait for it.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created" = 0 ] || as_root rm -f "$policy"
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# The servers refuse to run as root; they run as their packages' system users.
run_as() {
    local user=$1
    shift
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
    else
        "$@"
    fi
}

wait_for() {
    local what=$1 tries=$2
    shift 2
    for _ in $(seq "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what did not start; see its log under $DIR"
}

start_postgres() {
    local bin port data=$DIR/postgres
    bin=$(pg_bin)
    port=$(free_port)
    mkdir -p "$data"
    printf '%s\n' "$DB_PASSWORD" > "$DIR/pgpass"
    [ "$(id -u)" != 0 ] || chown -R postgres: "$data" "$DIR/pgpass"
    run_as postgres "$bin/initdb" -D "$data/data" -U "$DB_USER" --pwfile="$DIR/pgpass" \
        --auth=scram-sha-256 -E UTF8 --no-instructions >"$data/initdb.log" 2>&1 \
        || die "initdb failed: $(tail -n 5 "$data/initdb.log")"
    local listen=127.0.0.1
    if [ -n "${DB_EXTRA_LISTEN:-}" ]; then
        listen="127.0.0.1,$DB_EXTRA_LISTEN"
        echo "host all all ${DB_EXTRA_CIDR:?DB_EXTRA_CIDR must come with DB_EXTRA_LISTEN} scram-sha-256" \
            >> "$data/data/pg_hba.conf"
        echo "export DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST=$DB_EXTRA_LISTEN" >> "$DIR/env"
    fi
    echo "$port $listen" > "$data/listen"
    run_postgres
    echo "export DJANGO_MIGRATE_TEST_POSTGRES_PORT=$port" >> "$DIR/env"
    say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $(cat "$DIR/postgres.pid"))"
}

# run_postgres: starts the server initialised by start_postgres, on its port and addresses.
run_postgres() {
    local bin port listen data=$DIR/postgres
    bin=$(pg_bin)
    read -r port listen < "$data/listen"
    run_as postgres "$bin/postgres" -D "$data/data" -p "$port" -c listen_addresses="$listen" \
        -c unix_socket_directories="$data" -c max_connections=200 -c fsync=off \
        >>"$data/server.log" 2>&1 &
    wait_for PostgreSQL 150 "$bin/pg_isready" -h 127.0.0.1 -p "$port"
    # The server's own PID (`$!` is the background shell's), from its pid file.
    head -n 1 "$data/data/postmaster.pid" > "$DIR/postgres.pid"
}

# start_pgbouncer MODE: PgBouncer in pool MODE in front of the PostgreSQL of start_postgres,
# every database passed through, at most PGBOUNCER_POOL_SIZE server connections each.
start_pgbouncer() {
    local mode=$1 port pg_port listen data=$DIR/pgbouncer-$1 upper
    port=$(free_port)
    read -r pg_port _ < "$DIR/postgres/listen"
    listen=127.0.0.1
    [ "$mode" != transaction ] || [ -z "${DB_EXTRA_LISTEN:-}" ] || listen="127.0.0.1,$DB_EXTRA_LISTEN"
    mkdir -p "$data"
    printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" > "$data/userlist.txt"
    cat > "$data/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = $listen
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $data/userlist.txt
pool_mode = $mode
default_pool_size = $PGBOUNCER_POOL_SIZE
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile = $data/pgbouncer.log
pidfile = $data/pgbouncer.pid
EOF
    [ "$(id -u)" != 0 ] || chown -R postgres: "$data"
    run_as postgres pgbouncer "$data/pgbouncer.ini" >>"$data/server.log" 2>&1 &
    wait_for "PgBouncer ($mode)" 150 test -s "$data/pgbouncer.pid"
    wait_for "PgBouncer ($mode)" 150 "$(pg_bin)/pg_isready" -h 127.0.0.1 -p "$port"
    cat "$data/pgbouncer.pid" > "$DIR/pgbouncer-$mode.pid"
    upper=$(echo "$mode" | tr '[:lower:]' '[:upper:]')
    echo "export DJANGO_MIGRATE_TEST_PGBOUNCER_${upper}_PORT=$port" >> "$DIR/env"
    say "PgBouncer $(pgbouncer --version | awk 'NR==1 {print $2}') in $mode mode on $listen:$port (pid $(cat "$DIR/pgbouncer-$mode.pid"))"
}

start_mariadb() {
    local port data=$DIR/mariadb
    port=$(free_port)
    mkdir -p "$data"
    [ "$(id -u)" != 0 ] || chown -R mysql: "$data"
    run_as mysql mariadb-install-db --no-defaults --datadir="$data/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$data/install.log" 2>&1 \
        || die "mariadb-install-db failed: $(tail -n 5 "$data/install.log")"
    run_as mysql mariadbd --no-defaults --datadir="$data/data" --socket="$data/mysqld.sock" \
        --port="$port" --bind-address=127.0.0.1 --pid-file="$data/mysqld.pid" \
        --max-connections=200 --innodb-flush-log-at-trx-commit=0 --skip-log-bin \
        >"$data/server.log" 2>&1 &
    wait_for MariaDB 150 mariadb-admin --no-defaults --socket="$data/mysqld.sock" -u root ping
    cat "$data/mysqld.pid" > "$DIR/mariadb.pid"
    mariadb --no-defaults --socket="$data/mysqld.sock" -u root <<SQL
CREATE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
SQL
    echo "export DJANGO_MIGRATE_TEST_MARIADB_PORT=$port" >> "$DIR/env"
    say "MariaDB $(mariadbd --version | awk '{print $3}') on 127.0.0.1:$port (pid $(cat "$DIR/mariadb.pid"))"
}

start() {
    [ -n "${DIR:-}" ] || die "usage: $0 start DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" != 0 ] || chmod 755 "$DIR"
    : > "$DIR/env"
    if [ -n "${DJANGO_MIGRATE_IN_ROOTFS:-}" ]; then echo "$DJANGO_MIGRATE_IN_ROOTFS" >"$DIR/rootfs"; fi
    {
        echo "export DJANGO_MIGRATE_TEST_DB_USER=$DB_USER"
        echo "export DJANGO_MIGRATE_TEST_DB_PASSWORD=$DB_PASSWORD"
        echo "export DJANGO_MIGRATE_TEST_DB_DIR=$(cd "$DIR" && pwd)"
    } >> "$DIR/env"
    start_postgres
    command -v pgbouncer >/dev/null || die "PgBouncer is not installed: run scripts/databases.sh install"
    echo "export DJANGO_MIGRATE_TEST_PGBOUNCER_POOL_SIZE=$PGBOUNCER_POOL_SIZE" >> "$DIR/env"
    for mode in transaction session statement; do start_pgbouncer "$mode"; done
    start_mariadb
}

stop() {
    [ -n "${DIR:-}" ] || die "usage: $0 stop DIR"
    [ -d "$DIR" ] || return 0
    stop_servers pgbouncer-transaction pgbouncer-session pgbouncer-statement postgres mariadb
    rm -rf "$DIR"
}

# restart-postgres DIR SECONDS: PostgreSQL down for SECONDS, then up again on the same
# port with the same data, as a database failover or maintenance looks to its clients.
restart_postgres() {
    if [ -z "${DIR:-}" ] || [ ! -f "$DIR/postgres/listen" ]; then
        die "usage: $0 restart-postgres DIR SECONDS (after start DIR)"
    fi
    stop_servers postgres
    sleep "${1:?usage: $0 restart-postgres DIR SECONDS}"
    run_postgres
    say "PostgreSQL is back (pid $(cat "$DIR/postgres.pid"))"
}

stop_servers() {
    for name in "$@"; do
        local pidfile=$DIR/$name.pid pid
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only a PID that still runs this server's binary is ours to stop.
        if kill -0 "$pid" 2>/dev/null && grep -qa -e postgres -e mariadbd -e pgbouncer "/proc/$pid/cmdline"; then
            # PostgreSQL's fast shutdown (SIGINT) disconnects its clients; SIGTERM waits for them.
            kill "-$([ "$name" = postgres ] && echo INT || echo TERM)" "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                say "$name (pid $pid) did not stop; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    done
}

cmd=${1:-}
DIR=${2:-}
# Servers of another Debian release run in its root filesystem (scripts/rootfs.sh): with
# DB_ROOTFS set, `start` runs there and records it in DIR/rootfs, and every later command
# for DIR runs there too.
if [ -z "${DJANGO_MIGRATE_IN_ROOTFS:-}" ]; then
    rootfs=${DB_ROOTFS:-}
    if [ "$cmd" != start ] && [ -n "$DIR" ] && [ -f "$DIR/rootfs" ]; then rootfs=$(cat "$DIR/rootfs"); fi
    # Inside that root filesystem already (a test run in it), its path does not exist.
    if [ -n "$rootfs" ] && [ -d "$rootfs" ] && [ "$cmd" != install ]; then
        exec "$(dirname "$0")/in-rootfs.sh" "$rootfs" env DJANGO_MIGRATE_IN_ROOTFS="$rootfs" bash "$0" "$@"
    fi
fi
case "$cmd" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart-postgres) restart_postgres "${3:-}" ;;
    *) die "usage: $0 install | start DIR | stop DIR | restart-postgres DIR SECONDS" ;;
esac
