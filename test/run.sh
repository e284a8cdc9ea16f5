#!/usr/bin/env bash
# test/run.sh -- set up (test/setup.sh), then run every test layer:
# pg_regress (test/sql/), isolation (test/specs/) and TAP (test/t/),
# each against temporary servers it starts itself on free ports
# (make ES_TEMP_INSTANCE=1 installcheck; without it, make installcheck
# runs pg_regress and isolation against the running server, the PGXS way).
#
# On success the build directory is removed.  On failure it is kept (its
# path is printed), and what is needed to see why is printed here: the
# regression diffs, and for each failed TAP test its failed assertions and
# the tail of every server log it made, with any crash found in them.
set -euo pipefail
given_build=${ES_BUILD:-}
# What only the tests need besides (test/setup.sh installs it too).
ES_TEST_PACKAGES="prometheus chromium chromium-driver"
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

cd "$ES_BUILD"
set +e
$as_pg make PG_CONFIG=$PG_BIN/pg_config with_llvm=no ES_TEMP_INSTANCE=1 installcheck 2>&1 | tee installcheck.log
status=${PIPESTATUS[0]}
set -e
# Under ES_VALGRIND, memcheck's reports with a frame of this library: a
# function of ours (es_*, eventstream_*, named from the debug information)
# or an address in eventstream.so.
if [ -d valgrind ]; then
	ours='(: (es|eventstream)_[A-Za-z0-9_]+ \(|eventstream\.so)'
	reports=$(grep -lE "$ours" valgrind/*.log 2>/dev/null || true)
	echo "== valgrind: $(cat valgrind/*.log 2>/dev/null | grep -cE '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and)') errors in $(ls valgrind | wc -l) server processes; $(echo -n "$reports" | grep -c .) logs show a frame of eventstream"
	for f in $reports; do echo "== $f"; cat "$f"; done
	[ -z "$reports" ] || status=1
fi

# One closing line for all layers.
read -r passed failed < <(awk '
	/All [0-9]+ tests passed/ { for (i = 1; i <= NF; i++) if ($i == "All") p += $(i + 1) }
	/[0-9]+ of [0-9]+ tests failed/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "of") { f += $i; p += $(i + 2) - $i } }
	/^Files=[0-9]+, Tests=[0-9]+/ { split($2, t, "="); p += t[2] + 0 }
	/^Failed [0-9]+\/[0-9]+ subtests/ { split($2, t, "/"); f += t[1]; p -= t[1] }
	END { print p + 0, f + 0 }' installcheck.log)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi

# show_log FILE LINES: the last LINES lines of a log, headed by its name.
show_log() {
	echo "== tail of $1"
	tail -n "$2" "$1"
}

if [ "$status" -ne 0 ]; then
	for f in regression.diffs output_iso/regression.diffs; do
		[ -f "$f" ] && { echo "== $f"; cat "$f"; }
	done
	# pg_regress keeps its instance's log when a test failed.
	for f in tmp_check_regress/log/postmaster.log tmp_check_iso/log/postmaster.log; do
		[ -f "$f" ] && show_log "$f" 60
	done
	# TAP tests that failed, as prove's summary names them (or all that
	# have a log, when prove bailed out before its summary).
	failed_tap=$(sed -n 's|^test/t/\([0-9A-Za-z_]*\)\.pl *(Wstat.*|\1|p' installcheck.log)
	if [ -z "$failed_tap" ] && grep -q '^Bail out!\|^FAILED--' installcheck.log; then
		failed_tap=$(ls tmp_check/log 2>/dev/null | sed -n 's|^regress_log_||p')
	fi
	for t in $failed_tap; do
		log=tmp_check/log/regress_log_$t
		if [ -f "$log" ]; then
			echo "== $t: failed assertions"
			grep -A 6 '^\[[0-9:.]*\](.*) not ok\|^not ok' "$log" | head -n 80 || true
		fi
		for server in tmp_check/log/"$t"_*.log; do
			[ -f "$server" ] || continue
			grep -n 'terminated by signal\|PANIC\|TRAP:' "$server" | sed "s|^|crash? $server:|" || true
			show_log "$server" 40
		done
	done
	echo "== the build directory is kept: $ES_BUILD"
elif [ -z "$given_build" ]; then
	cd /
	rm -rf "$ES_BUILD"
fi
echo "eventstream tests: $passed passed, $failed failed"
exit $status
