# Makefile for eventstream (PGXS)
#
# Build out of tree with VPATH so that the source stays untouched:
#   make -f /path/to/src/Makefile VPATH=/path/to/src
# test/run.sh does that for you; see README.md.

MODULE_big = eventstream
OBJS = \
	src/eventstream.o \
	src/shmem.o \
	src/rowjson.o \
	src/pagejson.o \
	src/capture.o \
	src/condition.o \
	src/document.o \
	src/serve.o \
	src/http.o \
	src/keys.o \
	src/client.o \
	src/pull.o \
	src/apply.o \
	src/failed.o \
	src/mapping.o \
	src/worker.o

EXTENSION = eventstream
DATA = sql/eventstream--1.0.sql
PGFILEDESC = "eventstream - stream table changes between PostgreSQL sites"

SHLIB_LINK += -lcurl -lmicrohttpd
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers

# Every test layer runs against its own temporary instance with the library
# preloaded, so none of them depends on a running server or a free fixed port.
# pg_regress reads test/sql/ and test/expected/, the isolation tester
# test/specs/ and test/expected/; their results go to results/ and
# output_iso/ of the build directory.
REGRESS = capture diff children conditions consumers serve retention keys apply mapping plpgsql
REGRESS_OPTS = --inputdir=$(srcdir)/test --temp-instance=tmp_check_regress --temp-config=$(srcdir)/test/eventstream.conf
ISOLATION = out_of_order_commit concurrent_capture
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-instance=tmp_check_iso --temp-config=$(srcdir)/test/eventstream.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
