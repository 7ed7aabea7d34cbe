#!/usr/bin/env bash
# The project's own local PostgreSQL server: start | stop | status | dsn.
#
# Used when LAKEHOUSE_PG_DSN is not set (make demo, make ui) and always by make test. It is a
# private cluster on loopback (port LAKEHOUSE_PG_PORT, default 55432) with trust authentication:
# a development server, never a production one. As root (CI), PostgreSQL refuses to run as root, so
# the cluster belongs to the postgres user and its data lives under /var/lib/postgresql/lakehouse;
# as an ordinary user it lives in .local/pg of the clone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
port=${LAKEHOUSE_PG_PORT:-55432}
key=$(printf %s "$here" | md5sum | cut -c1-10)

find_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] && [ "$(id -u)" = 0 ]; then
    echo "pg: installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  if [ -z "$d" ]; then
    echo "pg: PostgreSQL server binaries not found; install them (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "$d"
}

if [ "$(id -u)" = 0 ]; then
  data=${LAKEHOUSE_PG_DATA:-/var/lib/postgresql/lakehouse/$key}
  as_pg() { runuser -u postgres -- "$@"; }
else
  data=${LAKEHOUSE_PG_DATA:-$here/.local/pg}
  as_pg() { "$@"; }
fi
log="$data.log"

running() {
  [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

case "${1:-status}" in
  start)
    bin=$(find_bin)
    if running; then
      echo "pg: already running on 127.0.0.1:$port ($data)"
    else
      if [ ! -f "$data/PG_VERSION" ]; then
        if [ "$(id -u)" = 0 ]; then
          mkdir -p "$(dirname "$data")"
          chown postgres:postgres "$(dirname "$data")"
        fi
        as_pg mkdir -p "$data"
        as_pg "$bin/initdb" -D "$data" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
      fi
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "pg: port $port is taken by another server; set LAKEHOUSE_PG_PORT to a free port" >&2
        exit 1
      fi
      [ "$(id -u)" = 0 ] && touch "$log" && chown postgres:postgres "$log"
      as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start \
        -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=100" >/dev/null
      echo "pg: started on 127.0.0.1:$port ($data)"
    fi
    # The database the demo and the default configuration use.
    if ! as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'lakehouse'" | grep -q 1; then
      as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE lakehouse"
    fi
    ;;
  stop)
    bin=$(find_bin)
    if running; then
      as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
      echo "pg: stopped ($data)"
    else
      echo "pg: not running ($data)"
    fi
    ;;
  status)
    bin=$(find_bin)
    if running; then echo "pg: running on 127.0.0.1:$port ($data)"; else echo "pg: not running ($data)"; exit 3; fi
    ;;
  dsn)
    # $2: the role (default postgres), $3: the database (default lakehouse)
    echo "postgresql://${2:-postgres}@127.0.0.1:$port/${3:-lakehouse}"
    ;;
  *)
    echo "usage: scripts/pg.sh start|stop|status|dsn [role] [database]" >&2
    exit 2
    ;;
esac
