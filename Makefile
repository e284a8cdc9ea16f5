# Makefile for eventstream (PGXS)
#
# The C sources are in src/, one folder per part (see src/eventstream.h).
# test/run.sh builds a copy of the tree; see README.md.  To build out of
# tree with VPATH, so that the source stays untouched:
#   make -f /path/to/eventstream/Makefile VPATH=/path/to/eventstream

MODULE_big = eventstream
OBJS = \
	src/site/eventstream.o \
	src/site/shmem.o \
	src/site/launcher.o \
	src/site/worker.o \
	src/producer/capture.o \
	src/producer/rowjson.o \
	src/producer/logids.o \
	src/producer/serve.o \
	src/producer/document.o \
	src/producer/condition.o \
	src/producer/keys.o \
	src/http/server.o \
	src/http/api.o \
	src/consumer/client.o \
	src/consumer/pull.o \
	src/consumer/pull_page.o \
	src/consumer/pull_prefetch.o \
	src/consumer/pagejson.o \
	src/consumer/apply.o \
	src/consumer/apply_statements.o \
	src/consumer/apply_jsonb.o \
	src/consumer/apply_direct.o \
	src/consumer/apply_batch.o \
	src/consumer/apply_log.o \
	src/consumer/apply_page.o \
	src/consumer/mapping.o \
	src/consumer/failed.o

EXTENSION = eventstream
DATA = sql/eventstream--1.0.sql
PGFILEDESC = "eventstream - stream table changes between PostgreSQL sites"

SHLIB_LINK += -lcurl -lmicrohttpd
# Headers are included by their path under src/ ("consumer/apply.h").
PG_CPPFLAGS += -I$(srcdir)/src
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers

# Every test layer runs against its own temporary instance with the library
# preloaded, so none of them depends on a running server or a free fixed port.
REGRESS = capture diff children conditions consumers serve retention keys apply mapping
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=$(srcdir)/test/eventstream.conf
ISOLATION = out_of_order_commit concurrent_capture
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-instance=tmp_check_iso --temp-config=$(srcdir)/test/eventstream.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Out of tree, the objects' folders are made first (named by absolute
# paths, which VPATH does not look up in the source tree).
ifdef VPATH
es_objdirs := $(addprefix $(CURDIR)/,$(sort $(dir $(OBJS))))
$(OBJS): | $(es_objdirs)
$(es_objdirs):
	$(MKDIR_P) $@
endif
