#!/usr/bin/env bash
# test/demo.sh -- set up (test/setup.sh), then show eventstream at work on a
# throwaway server: a producer site logs the changes of subscribed tables and
# serves them, page by page, to a registered consumer.
#
# The server listens on a Unix socket in a private directory only, so the
# demo never collides with anything already running on this machine.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

DEMO=$(mktemp -d /tmp/eventstream-demo.XXXXXX)
chown postgres:postgres "$DEMO"
cleanup() {
	$as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT

$as_pg "$PG_BIN/initdb" -D "$DEMO/data" -A trust -U postgres >/dev/null
cat >> "$DEMO/data/postgresql.conf" <<CONF
shared_preload_libraries = 'eventstream'
listen_addresses = ''
unix_socket_directories = '$DEMO'
CONF
$as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null

echo "== demo: a producer site (database 'hq') on a temporary server"
$as_pg "$PG_BIN/createdb" -h "$DEMO" hq
$as_pg "$PG_BIN/psql" -h "$DEMO" -X -q -v ON_ERROR_STOP=1 -a -f "$ES_SRC/test/demo.sql" hq
echo "== demo finished"
