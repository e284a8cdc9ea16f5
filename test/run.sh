#!/usr/bin/env bash
# test/run.sh -- set up (test/setup.sh), then run every test layer:
# pg_regress (sql/, expected/), isolation (test/specs/) and TAP (test/t/),
# each against temporary servers it starts itself on free ports.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

cd "$ES_BUILD"
set +e
$as_pg make PG_CONFIG=$PG_BIN/pg_config with_llvm=no installcheck 2>&1 | tee installcheck.log
status=${PIPESTATUS[0]}
set -e

# One closing line for all layers.
read -r passed failed < <(awk '
	/All [0-9]+ tests passed/ { for (i = 1; i <= NF; i++) if ($i == "All") p += $(i + 1) }
	/[0-9]+ of [0-9]+ tests failed/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "of") { f += $i; p += $(i + 2) - $i } }
	/^Files=[0-9]+, Tests=[0-9]+/ { split($2, t, "="); p += t[2] + 0 }
	/^Failed [0-9]+\/[0-9]+ subtests/ { split($2, t, "/"); f += t[1]; p -= t[1] }
	END { print p + 0, f + 0 }' installcheck.log)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$status" -ne 0 ]; then
	for f in regression.diffs output_iso/regression.diffs; do
		[ -f "$f" ] && { echo "== $f"; cat "$f"; }
	done
	[ -d tmp_check/log ] && tail -n 50 tmp_check/log/regress_log_* 2>/dev/null | tail -n 200
fi
echo "eventstream tests: $passed passed, $failed failed"
exit $status
