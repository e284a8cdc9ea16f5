#!/usr/bin/env bash
# test/bench/http_idle.sh -- what do idle long-polling consumers cost?
#
# Registers `consumers` consumers (default 100) of table t, then measures
# the site worker's CPU time (utime + stime from /proc/<pid>/stat) over two
# windows of `seconds` each (default 30) with no writes at all:
#   baseline  no HTTP client connected;
#   idle      every consumer holding a long-poll (GET /api/eventstream/v1/
#             updates?...&limit=100&wait=60, re-issued on the same
#             connection whenever answered) on a connection of its own,
#             all from one process (test/bench/http_idle.pl, non-blocking
#             sockets); the window starts once every consumer has pulled
#             (last_pull_at set) and its connection is established.
# Reports CPU seconds and % of one core for each window, the connections
# open to the endpoint during it, and how many polls were answered (none are
# expected when the window ends before the 60 s wait runs out).
#
# Usage (as root, from anywhere):
#   bash test/bench/http_idle.sh [seconds] [consumers]      (default 30 100)
#
# Server set-up, build and clean-up: test/bench/http_common.sh.
set -euo pipefail

usage() {
	echo "usage: bash test/bench/http_idle.sh [seconds] [consumers]" >&2
	exit 2
}
SECS=${1:-30}
CONSUMERS=${2:-100}
[[ $SECS =~ ^[1-9][0-9]*$ && $CONSUMERS =~ ^[1-9][0-9]*$ && $# -le 2 ]] || usage
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }
WAIT=60

BENCH_NAME=http_idle.sh
BENCH_PACKAGES="libjson-xs-perl"
. "$(dirname "${BASH_SOURCE[0]}")/http_common.sh"

setup_table_and_key
: > "$WORK/cursors"
for (( i = 1; i <= CONSUMERS; i++ )); do
	echo "http://idle-$i $(register_consumer "http://idle-$i")" >> "$WORK/cursors"
done

bench_header "idle long-poll benchmark"
echo "client:     perl test/bench/http_idle.pl: $CONSUMERS consumers, one connection each, GET updates?limit=100&wait=$WAIT re-issued when answered"
echo "window:     $SECS s without writes, baseline (no client) first"
echo

WPID=$(worker_pid)

# Established TCP connections to the endpoint (server side), from /proc.
http_connections() {
	local hex
	hex=$(printf ':%04X' "$HTTP_PORT")
	awk -v p="$hex" '$2 ~ p "$" && $4 == "01"' /proc/net/tcp | wc -l
}

# window: prints "cpu_seconds percent_of_one_core" for SECS seconds of the worker.
window() {
	local w0 w1 t0 t1
	w0=$(proc_ticks "$WPID"); t0=$EPOCHREALTIME
	sleep "$SECS"
	w1=$(proc_ticks "$WPID"); t1=$EPOCHREALTIME
	awk -v t="$((w1 - w0))" -v hz="$HZ" -v a="$t0" -v b="$t1" \
		'BEGIN { printf "%.2f %.3f %.1f\n", t / hz, t / hz / (b - a) * 100, b - a }'
}

printf '%-10s %12s %12s %12s %12s\n' window seconds cpu_seconds "% of a core" connections
read -r cpu pct dt <<<"$(window)"
printf '%-10s %12.1f %12.2f %12.3f %12s\n' baseline "$dt" "$cpu" "$pct" "$(http_connections)"
base_cpu=$cpu base_pct=$pct

perl "$BENCH_DIR/http_idle.pl" 127.0.0.1 "$HTTP_PORT" "$KEY:$SECRET" "$WAIT" "$WORK/cursors" > "$WORK/idle.out" &
CLIENT=$!
BENCH_PIDS+=("$CLIENT")

# Every consumer has pulled and parked.
deadline=$(( SECONDS + 60 ))
while :; do
	pulled=$(psql_bench -c "SELECT count(*) FROM eventstream.consumer WHERE consumer_url LIKE 'http://idle-%' AND last_pull_at IS NOT NULL")
	[ "$pulled" -eq "$CONSUMERS" ] && break
	kill -0 "$CLIENT" 2>/dev/null || bench_die "the long-polling client died"
	[ "$SECONDS" -lt "$deadline" ] || bench_die "only $pulled of $CONSUMERS consumers pulled within 60 s"
	sleep 0.2
done
sleep 1
conns_before=$(http_connections)
c0=$(proc_ticks "$CLIENT")
other_begin
read -r cpu pct dt <<<"$(window)"
c1=$(proc_ticks "$CLIENT")
other=$(other_end "$(awk -v t="$((c1 - c0))" -v hz="$HZ" 'BEGIN { print t / hz }')")
conns_after=$(http_connections)
kill -0 "$CLIENT" 2>/dev/null || bench_die "the long-polling client died during the window"
printf '%-10s %12.1f %12.2f %12.3f %12s\n' idle "$dt" "$cpu" "$pct" "$conns_before -> $conns_after"
kill -TERM "$CLIENT"
wait "$CLIENT" || bench_die "the long-polling client failed"
read -r replies updates reconnects < "$WORK/idle.out"
[ "$conns_before" -ge "$CONSUMERS" ] && [ "$conns_after" -ge "$CONSUMERS" ] ||
	bench_die "expected $CONSUMERS connections to the endpoint during the window, saw $conns_before -> $conns_after"
[ "$updates" -eq 0 ] || bench_die "polls received $updates updates although nothing was written"
echo
echo "polls answered during the run (client start to end of window): $replies, reconnects: $reconnects, updates: $updates"
echo "during the idle window: client cpu $(awk -v t="$((c1 - c0))" -v hz="$HZ" 'BEGIN { print t / hz }') s, other processes $other% of the machine"

echo
echo "== summary ($CONSUMERS idle long-polls, ${SECS}s window, no writes)"
printf 'site worker cpu with %d parked long-polls: %.2f s in %ss = %.3f%% of one core\n' "$CONSUMERS" "$cpu" "$SECS" "$pct"
printf 'site worker cpu with no client (baseline):  %.2f s in %ss = %.3f%% of one core\n' "$base_cpu" "$SECS" "$base_pct"
