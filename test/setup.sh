#!/usr/bin/env bash
# test/setup.sh -- install what eventstream needs, then build and install it.
#
# Sourced by test/demo.sh and test/run.sh (not meant to be run alone).  On a
# fresh Debian 12 machine it installs the packages below with apt, copies the
# source into a build directory owned by the postgres user (PostgreSQL
# refuses to run as root, and so do its test tools), builds there as postgres
# and installs as root.  Afterwards these variables are set (and the function
# es_install_packages defined):
#   ES_SRC      the source tree
#   ES_BUILD    the build directory (owned by postgres)
#   PG_BIN      PostgreSQL 15's bin directory
#   as_pg       prefix that runs a command as the postgres user
# With ES_VALGRIND=1 the tests run against a copy of PostgreSQL in the
# build directory whose postgres runs under valgrind's memcheck (reports in
# $ES_BUILD/valgrind, read by test/run.sh).
set -euo pipefail

ES_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}	# another (relocated) installation may be given
# postgresql-15-plpgsql-check: the tests check every PL/pgSQL function with
# it.  test/run.sh adds ES_TEST_PACKAGES: prometheus (promtool checks the
# metrics, test/t/028_metrics.pl), chromium and chromium-driver (the status
# page in a browser, test/t/029_status_page.pl).
ES_PACKAGES="postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev libmicrohttpd-dev libipc-run-perl curl openssl postgresql-15-plpgsql-check ${ES_TEST_PACKAGES:-}"

if [ "$(id -u)" -ne 0 ]; then
	echo "eventstream: run this as root (or with sudo): it installs packages and the extension." >&2
	exit 1
fi

# es_install_packages PACKAGE...: install with apt those not installed yet
# (the benchmarks call it for what they need besides).
es_install_packages() {
	local p missing=""
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		echo "== installing:$missing"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
	fi
}
es_install_packages $ES_PACKAGES

ES_BUILD=${ES_BUILD:-$(mktemp -d /tmp/eventstream-build.XXXXXX)}
chmod 755 "$ES_BUILD"
# Copy the tree (not .git) so the postgres user can read and write it
# wherever the checkout lives.
tar -C "$ES_SRC" --exclude=.git -cf - . | tar -C "$ES_BUILD" -xf -
chown -R postgres:postgres "$ES_BUILD"

as_pg="runuser -u postgres --"
if [ -n "${ES_VALGRIND:-}" ]; then
	# A relocated copy (PostgreSQL finds its files relative to its binaries)
	# whose postgres is a script running the real one under memcheck.
	es_install_packages valgrind
	vg=$ES_BUILD/pg
	mkdir -p "$vg/usr/lib/postgresql" "$vg/usr/share/postgresql" "$vg/usr/include" "$ES_BUILD/valgrind"
	cp -a "$PG_BIN/.." "$vg/usr/lib/postgresql/15"
	cp -a "$("$PG_BIN/pg_config" --sharedir)" "$vg/usr/share/postgresql/15"
	cp -a "$("$PG_BIN/pg_config" --includedir)" "$vg/usr/include/postgresql"
	PG_BIN=$vg/usr/lib/postgresql/15/bin
	mv "$PG_BIN/postgres" "$PG_BIN/postgres.real"
	# initdb's bootstrap and single-user runs, and option queries, run
	# plain: the extension is not loaded there, and under memcheck they
	# would take most of the time.
	cat > "$PG_BIN/postgres" <<-EOF
	#!/bin/sh
	case " \$* " in
	*" --boot "*|*" --single "*|*" -C "*|*" --check "*|*" -V "*|*" --version "*|*" --describe-config "*)
		exec "\$(dirname "\$0")/postgres.real" "\$@" ;;
	esac
	exec valgrind --quiet --error-limit=no --num-callers=30 --suppressions=$ES_BUILD/test/valgrind.supp --log-file=$ES_BUILD/valgrind/%p.log "\$(dirname "\$0")/postgres.real" "\$@"
	EOF
	chmod 755 "$PG_BIN/postgres"
	chown -R postgres:postgres "$ES_BUILD"
fi
echo "== building in $ES_BUILD"
(cd "$ES_BUILD" && $as_pg make -s PG_CONFIG=$PG_BIN/pg_config with_llvm=no >/dev/null)
(cd "$ES_BUILD" && make -s PG_CONFIG=$PG_BIN/pg_config with_llvm=no install >/dev/null)
export PATH="$PG_BIN:$PATH"
