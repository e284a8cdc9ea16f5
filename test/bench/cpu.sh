# test/bench/cpu.sh -- CPU accounting and medians shared by the benchmark
# scripts (sourced, not run).  A script sets BENCH_DATA_DIRS to the data
# directories of the servers it runs; other_begin / other_end then tell
# whether something else on the machine competed with a measurement.

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

# Clock ticks the whole machine has been busy (user nice system irq softirq).
machine_busy() {
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# cluster_ticks DATADIR...: ticks spent by those servers: each postmaster
# with the children it has reaped, and its live children.  A directory
# without a running server counts nothing.
cluster_ticks() {
	local d pm kid
	for d in "$@"; do
		[ -f "$d/postmaster.pid" ] || continue
		pm=$(head -n 1 "$d/postmaster.pid")
		{
			cat "/proc/$pm/stat" 2>/dev/null || true
			for kid in $(pgrep -P "$pm"); do cat "/proc/$kid/stat" 2>/dev/null || true; done
		} | sed 's/^.*) //' | awk -v pm="$pm" '$2 == pm { s += $12 + $13; next } { s += $12 + $13 + $14 + $15 } END { print s + 0 }'
	done | awk '{ s += $1 } END { print s + 0 }'
}

# other_begin, then other_end CLIENT_CPU_SECONDS: prints the share (%) of the
# machine's CPU used since other_begin by anything but the servers of
# BENCH_DATA_DIRS and the benchmark's client.  A server stopped or started
# in between makes it approximate.
other_begin() {
	OTHER_BUSY=$(machine_busy); OTHER_SRV=$(cluster_ticks $BENCH_DATA_DIRS); OTHER_T=$EPOCHREALTIME
}
other_end() {
	local busy srv t
	busy=$(machine_busy); srv=$(cluster_ticks $BENCH_DATA_DIRS); t=$EPOCHREALTIME
	awk -v b="$((busy - OTHER_BUSY))" -v s="$((srv - OTHER_SRV))" -v c="$1" -v hz="$HZ" -v n="$NCPU" \
		-v t0="$OTHER_T" -v t1="$t" \
		'BEGIN { o = (b - s - c * hz) / ((t1 - t0) * hz * n) * 100; printf "%.0f", (o < 0 ? 0 : o) }'
}

# Median of the numbers on standard input, one per line.
median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
