#!/usr/bin/env bash
# test/bench/http_common.sh -- shared set-up of the HTTP benchmarks.
#
# Sourced (not run) by test/bench/http_serve.sh, http_wake.sh, http_idle.sh
# and http_load.sh, after they have set BENCH_NAME.  It:
#   * installs procps and the Debian packages named in BENCH_PACKAGES (plus
#     what test/setup.sh installs), then builds and installs eventstream through
#     test/setup.sh (sets ES_BUILD, PG_BIN, as_pg);
#   * starts a throwaway server: initdb into a private temporary directory
#     owned by postgres, a free TCP port found at start (retried with another
#     one if the server cannot take it), the Unix socket in that directory,
#     shared_preload_libraries = 'eventstream', eventstream.prune_interval = 0,
#     fsync = off, synchronous_commit = off, and whatever the environment
#     variable ES_BENCH_CONF adds (e.g. ES_BENCH_CONF='jit = off');
#   * creates database "bench" with eventstream.http_port set to another
#     free port, runs CREATE EXTENSION eventstream there and waits (with a
#     deadline) until GET /api/eventstream/v1/health answers 200;
#   * removes the server, its directory and the build directory on exit.
# Afterwards: WORK, PORT (PostgreSQL), HTTP_PORT, BASE (the API's base URL),
# psql_bench (psql on database bench, unaligned, tuples only, stop on error)
# and the helpers below.
set -Eeuo pipefail

: "${BENCH_NAME:?set BENCH_NAME before sourcing http_common.sh}"
# Say which command failed rather than stop silently.
trap 'echo "$BENCH_NAME: failed at ${BASH_SOURCE[0]##*/} line $LINENO: $BASH_COMMAND" >&2' ERR
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bench_die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

# ---------------------------------------------------------------------------
# Packages, build, install
# ---------------------------------------------------------------------------

own_build=${ES_BUILD:-}
. "$BENCH_DIR/../setup.sh"		# sets ES_BUILD, PG_BIN, as_pg; checks root

es_install_packages procps ${BENCH_PACKAGES:-}		# procps: pgrep

# ---------------------------------------------------------------------------
# A throwaway server
# ---------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/eventstream-bench.XXXXXX)
BENCH_DATA_DIRS=$WORK/data
chmod 755 "$WORK"
chown postgres:postgres "$WORK"
# Scripts may register more clean-up (client processes) in BENCH_PIDS.
BENCH_PIDS=()
bench_cleanup() {
	local pid
	for pid in "${BENCH_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	if [ -f "$WORK/data/postmaster.pid" ]; then
		$as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
	# The build directory too, unless the caller supplied it.
	[ -n "$own_build" ] || rm -rf "$ES_BUILD"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"		# somewhere the postgres user may be

$as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF

# test/bench/$BENCH_NAME
shared_preload_libraries = 'eventstream'
eventstream.prune_interval = 0
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 50
shared_buffers = 256MB
fsync = off
synchronous_commit = off
max_wal_size = 8GB
checkpoint_timeout = 1h
log_min_messages = warning
CONF
# Extra settings for an experiment, e.g. ES_BENCH_CONF='jit = off'
# (several separated by newlines or semicolons); shown in the header.
if [ -n "${ES_BENCH_CONF:-}" ]; then
	printf '%s\n' "${ES_BENCH_CONF//;/$'\n'}" >> "$WORK/data/postgresql.conf"
fi

# A TCP port nobody listens on: nothing answers a connection to it.  Another
# process may still take it before we do; starting is retried then.
port_answers() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
free_port() {
	local p
	for _ in $(seq 100); do
		p=$(( 20000 + RANDOM % 40000 ))
		if [ "$p" != "${PORT:-}" ] && ! port_answers "$p" && [ ! -e "$WORK/.s.PGSQL.$p" ]; then
			echo "$p"
			return 0
		fi
	done
	echo "$BENCH_NAME: found no free TCP port" >&2
	return 1
}
PORT=
for attempt in 1 2 3 4 5; do
	p=$(free_port)
	if $as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -o "-p $p" -w -t 60 start >/dev/null; then
		PORT=$p
		break
	fi
	echo "== server did not start on port $p (attempt $attempt)" >&2
	tail -n 5 "$WORK/server.log" >&2 || true
done
[ -n "$PORT" ] || bench_die "could not start the server"

psql_bench() {
	$as_pg "$PG_BIN/psql" -h "$WORK" -p "$PORT" -X -q -At -v ON_ERROR_STOP=1 -d bench "$@"
}
$as_pg "$PG_BIN/createdb" -h "$WORK" -p "$PORT" bench

# ---------------------------------------------------------------------------
# The HTTP endpoint
# ---------------------------------------------------------------------------

HTTP_PORT=$(free_port)
psql_bench -c "ALTER DATABASE bench SET eventstream.http_port = $HTTP_PORT"
psql_bench -c "CREATE EXTENSION eventstream"
BASE="http://127.0.0.1:$HTTP_PORT/api/eventstream/v1"

# Poll health until 200, for at most 60 s.
health=""
deadline=$(( SECONDS + 60 ))
while [ "$SECONDS" -lt "$deadline" ]; do
	health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/health" || true)
	[ "$health" = 200 ] && break
	sleep 0.1
done
if [ "$health" != 200 ]; then
	tail -n 20 "$WORK/server.log" >&2 || true
	bench_die "the HTTP endpoint did not answer on port $HTTP_PORT within 60 s (last status '$health')"
fi

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# The site worker's pid (exactly one must run in database bench).
worker_pid() {
	local pids
	pids=$(psql_bench -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'bench'")
	[ "$(wc -w <<<"$pids")" -eq 1 ] || bench_die "expected one eventstream worker in database bench, found: '$pids'"
	echo "$pids"
}

# CPU clock ticks (utime + stime) a process has used so far.
proc_ticks() {
	sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# VmRSS of a process, in kB.
proc_rss_kb() {
	awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

. "$BENCH_DIR/cpu.sh"		# machine_busy, other_begin / other_end, median

# A table t (id int primary key, v text), a non-superuser role that may read
# it, and an API key for that role: sets KEY and SECRET.
setup_table_and_key() {
	psql_bench >/dev/null <<-'SQL'
		CREATE TABLE t (id int PRIMARY KEY, v text);
		CREATE ROLE bench_reader;
		GRANT SELECT ON t TO bench_reader;
	SQL
	local pair
	pair=$(psql_bench -c "SELECT api_key || ':' || api_secret FROM eventstream.create_api_key('bench_reader')")
	KEY=${pair%%:*}
	SECRET=${pair#*:}
	[ -n "$KEY" ] && [ -n "$SECRET" ] || bench_die "create_api_key gave no key"
}

# register_consumer URL: POST /consumers for table t with KEY:SECRET, then
# approve the subscription; prints the cursor registration returned.
register_consumer() {
	local url=$1 body code cursor
	body=$(curl -s -w '\n%{http_code}' --max-time 30 -X POST \
		-H "Authorization: token $KEY:$SECRET" -H 'Content-Type: application/json' \
		--data-binary "{\"consumer_url\": \"$url\", \"site_id\": \"$(cat /proc/sys/kernel/random/uuid)\", \"tables\": [\"t\"]}" \
		"$BASE/consumers")
	code=${body##*$'\n'}
	body=${body%$'\n'*}
	[ "$code" = 200 ] || bench_die "registering $url: HTTP $code: $body"
	cursor=$(json_field cursor <<<"$body")
	[ -n "$cursor" ] || bench_die "registering $url: no cursor in $body"
	psql_bench -c "SELECT eventstream.approve('$url', 'public.t')" >/dev/null
	# The approval is news for the consumer: its next pull answers at once
	# with the new status.  Take that pull here, so that callers start from
	# a cursor whose next pull waits for updates.
	body=$(curl -s -w '\n%{http_code}' --max-time 30 -H "Authorization: token $KEY:$SECRET" \
		"$BASE/updates?consumer=$(uri_escape "$url")&cursor=$(uri_escape "$cursor")&limit=1")
	code=${body##*$'\n'}
	body=${body%$'\n'*}
	[ "$code" = 200 ] || bench_die "first pull of $url: HTTP $code: $body"
	[ "$(json_count updates <<<"$body")" = 0 ] || bench_die "first pull of $url: expected no updates yet: $body"
	cursor=$(json_field cursor <<<"$body")
	echo "$cursor"
}

# json_field NAME: the top-level string NAME of the JSON object on standard
# input ('' when missing); json_count NAME: the length of its array NAME.
json_field() {
	perl -MJSON::PP -e 'local $/; my $v = eval { JSON::PP->new->decode(<STDIN>) };
		print ref $v eq "HASH" && defined $v->{$ARGV[0]} ? $v->{$ARGV[0]} : ""' "$1"
}
json_count() {
	perl -MJSON::PP -e 'local $/; my $v = eval { JSON::PP->new->decode(<STDIN>) };
		print ref $v eq "HASH" && ref $v->{$ARGV[0]} eq "ARRAY" ? scalar @{ $v->{$ARGV[0]} } : -1' "$1"
}

# Percent-encode a query parameter value.
uri_escape() {
	local s=$1 out="" c i
	for (( i = 0; i < ${#s}; i++ )); do
		c=${s:i:1}
		case $c in
		[A-Za-z0-9_.~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	echo "$out"
}

bench_header() {
	echo "== eventstream $1"
	echo "command:    ${ES_BENCH_CONF:+ES_BENCH_CONF=$(printf '%q' "$ES_BENCH_CONF") }$COMMAND_LINE"
	echo "nproc:      $(nproc)"
	echo "postgres:   $(psql_bench -c 'SELECT version()')"
	echo "server:     port $PORT, HTTP on 127.0.0.1:$HTTP_PORT, fsync=off synchronous_commit=off shared_buffers=256MB prune_interval=0"
	echo "settings:   jit=$(psql_bench -c 'SHOW jit')${ES_BENCH_CONF:+, ES_BENCH_CONF='$ES_BENCH_CONF'}"
}
