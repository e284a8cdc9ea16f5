#!/usr/bin/env bash
# test/bench/http_load.sh -- the pull endpoint under load, and its memory.
#
# One approved consumer of table t with a small backlog (100 updates);
# wrk hammers GET /api/eventstream/v1/updates?consumer=...&cursor=<its
# registration cursor>&limit=100 with the Authorization header (pulling the
# same cursor again is allowed and re-serves the same page: every reply
# carries the 100 updates, about 14 kB of JSON).  Two runs of
#   wrk -t<threads> -c<connections> -d<seconds>s --latency
# (default -t2 -c16 -d30s).  Reports requests/s, latency percentiles,
# non-2xx responses and socket errors (both must be 0, or the script
# fails), the site worker's CPU time per run, and its memory (VmRSS, and
# RssAnon, the private part: VmRSS also counts shared buffers as the worker
# touches them) before the first run, after it, and after the second: the
# second run should not grow it.  Warns when other processes took more than
# 10% of the machine's CPU during a run.
#
# Usage (as root, from anywhere):
#   bash test/bench/http_load.sh [seconds] [connections] [threads]   (default 30 16 2)
#
# Installs wrk if missing.  Server set-up, build and clean-up:
# test/bench/http_common.sh.
set -euo pipefail

usage() {
	echo "usage: bash test/bench/http_load.sh [seconds] [connections] [threads]" >&2
	exit 2
}
SECS=${1:-30}
CONNS=${2:-16}
THREADS=${3:-2}
[[ $SECS =~ ^[1-9][0-9]*$ && $CONNS =~ ^[1-9][0-9]*$ && $THREADS =~ ^[1-9][0-9]*$ && $# -le 3 ]] || usage
(( THREADS <= CONNS )) || usage
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }
BACKLOG=100
LIMIT=100

BENCH_NAME=http_load.sh
BENCH_PACKAGES="wrk"
. "$(dirname "${BASH_SOURCE[0]}")/http_common.sh"

setup_table_and_key
CURSOR=$(register_consumer "http://load-1")
psql_bench -c "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, $BACKLOG) g"
URL="$BASE/updates?consumer=$(uri_escape http://load-1)&cursor=$(uri_escape "$CURSOR")&limit=$LIMIT"

# The URL serves the whole backlog, twice in a row (same cursor, same page).
for i in 1 2; do
	body=$(curl -s -w '\n%{http_code}' --max-time 30 -H "Authorization: token $KEY:$SECRET" "$URL")
	code=${body##*$'\n'}
	body=${body%$'\n'*}
	[ "$code" = 200 ] || bench_die "pull $i: HTTP $code: $body"
	n=$(json_count updates <<<"$body")
	[ "$n" -eq "$BACKLOG" ] || bench_die "pull $i served $n updates, expected $BACKLOG"
done
REPLY_BYTES=${#body}

WRK=(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H "Authorization: token <key>:<secret>" "<url>")
bench_header "pull endpoint load benchmark"
echo "wrk:        $( (wrk -v 2>&1 || true) | head -n 1)"
echo "load:       ${WRK[*]}"
echo "url:        $URL"
echo "reply:      $BACKLOG updates, $REPLY_BYTES bytes of JSON (checked twice with curl)"
echo

WPID=$(worker_pid)

# memory: the worker's "VmRSS RssAnon RssShmem" in kB.
memory() {
	awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssShmem:/ { s = $2 } END { print r, a, s }' "/proc/$WPID/status"
}

# run N: one wrk run; prints its figures, appends "N rps p50 p99" to results,
# fails on any non-2xx response or socket error.
run() {
	local n=$1 out w0 w1 other rps lat50 lat90 lat99 latmax reqs non2xx sockerr
	other_begin
	w0=$(proc_ticks "$WPID")
	{ time wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H "Authorization: token $KEY:$SECRET" "$URL" \
		> "$WORK/wrk.$n.out" 2>&1; } 2> "$WORK/wrk.$n.time" ||
		{ cat "$WORK/wrk.$n.out" >&2; bench_die "wrk failed"; }
	w1=$(proc_ticks "$WPID")
	other=$(other_end "$(awk '{ print $1 + $2 }' "$WORK/wrk.$n.time")")
	out=$(cat "$WORK/wrk.$n.out")
	rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
	reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
	lat50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
	lat90=$(awk '$1 == "90%" { print $2 }' <<<"$out")
	lat99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
	latmax=$(awk '$1 == "Latency" && NF >= 4 { print $4; exit }' <<<"$out")
	non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$out")
	sockerr=$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' <<<"$out")
	[ -n "$rps" ] && [ -n "$reqs" ] || { echo "$out" >&2; bench_die "could not read wrk's output"; }
	printf 'run %d: %s requests, %s requests/s; latency p50 %s p90 %s p99 %s max %s; non-2xx %s; socket errors: %s; worker cpu %.1f s; other processes %s%% of the machine\n' \
		"$n" "$reqs" "$rps" "$lat50" "$lat90" "$lat99" "$latmax" "${non2xx:-0}" "${sockerr:-none}" \
		"$(awk -v t="$((w1 - w0))" -v hz="$HZ" 'BEGIN { print t / hz }')" "$other"
	if [ "${non2xx:-0}" != 0 ] || [ -n "$sockerr" ]; then
		echo "$out" >&2
		bench_die "FAILED: run $n had non-2xx responses (${non2xx:-0}) or socket errors (${sockerr:-none})"
	fi
	echo "$n $rps $lat50 $lat99 $other" >> "$WORK/results"
}

TIMEFORMAT='%U %S'
: > "$WORK/results"
read -r rss0 anon0 shm0 <<<"$(memory)"
run 1
read -r rss1 anon1 shm1 <<<"$(memory)"
run 2
read -r rss2 anon2 shm2 <<<"$(memory)"

echo
echo "== summary (2 runs of wrk -t$THREADS -c$CONNS -d${SECS}s, GET updates with $LIMIT of $BACKLOG updates per reply)"
awk '{ printf "run %d: %10.1f requests/s   latency p50 %-9s p99 %-9s non-2xx 0, socket errors 0\n", $1, $2, $3, $4 }' "$WORK/results"
printf 'site worker memory (kB)  %10s %12s %12s %22s\n' before "after run 1" "after run 2" "change during run 2"
printf '  VmRSS                  %10d %12d %12d %+22d\n' "$rss0" "$rss1" "$rss2" $(( rss2 - rss1 ))
printf '  RssAnon (private)      %10d %12d %12d %+22d\n' "$anon0" "$anon1" "$anon2" $(( anon2 - anon1 ))
printf '  RssShmem (shared)      %10d %12d %12d %+22d\n' "$shm0" "$shm1" "$shm2" $(( shm2 - shm1 ))
worst=$(awk '$5 > m { m = $5 } END { print m + 0 }' "$WORK/results")
if [ "$worst" -gt 10 ]; then
	echo
	echo "WARNING: up to $worst% of the machine's CPU went to other processes during a run;"
	echo "         the figures are disturbed, run again on a quiet machine."
fi
