# Makefile for eventstream (PGXS)
#
# The C sources are in src/, one folder per part (see src/eventstream.h).
# test/run.sh builds a copy of the tree; see README.md.  To build out of
# tree with VPATH, so that the source stays untouched:
#   make -f /path/to/eventstream/Makefile VPATH=/path/to/eventstream

MODULE_big = eventstream
OBJS = \
	src/site/eventstream.o \
	src/site/admin.o \
	src/site/shmem.o \
	src/site/launcher.o \
	src/site/worker.o \
	src/site/wire.o \
	src/producer/capture.o \
	src/producer/capture_args.o \
	src/producer/added.o \
	src/producer/truncate.o \
	src/producer/rowjson.o \
	src/producer/logids.o \
	src/producer/serve.o \
	src/producer/document.o \
	src/producer/condition.o \
	src/producer/sandbox.o \
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
	src/consumer/apply_values.o \
	src/consumer/apply_direct.o \
	src/consumer/apply_batch.o \
	src/consumer/apply_columns.o \
	src/consumer/apply_keys.o \
	src/consumer/apply_fk.o \
	src/consumer/apply_truncate.o \
	src/consumer/apply_log.o \
	src/consumer/apply_page.o \
	src/consumer/mapping.o \
	src/consumer/failed.o

# The extension's version is the control file's default_version (1.1): its
# install script, eventstream--$(EXTVERSION).sql, is built from SQL_PARTS.
# Each earlier version keeps its install script, frozen under sql/ as make
# built it, and its own control file where its settings differ; the update
# script from the version before, eventstream--$(PREVIOUS)--$(EXTVERSION).sql,
# is built (see below).  To start version 1.2: build
# eventstream--1.0--1.1.sql once and freeze it under sql/ (into DATA), set
# PREVIOUS to 1.1 and default_version to 1.2, and begin
# sql/update--1.1--1.2.sql.
EXTENSION = eventstream
EXTVERSION = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(srcdir)/eventstream.control)
PREVIOUS = 1.0
DATA = sql/eventstream--1.0.sql eventstream--1.0.control
DATA_built = eventstream--$(EXTVERSION).sql eventstream--$(PREVIOUS)--$(EXTVERSION).sql
PGFILEDESC = "eventstream - stream table changes between PostgreSQL sites"

SHLIB_LINK += -lcurl -lmicrohttpd
# Headers are included by their path under src/ ("consumer/apply.h").
PG_CPPFLAGS += -I$(srcdir)/src
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers

# The install script, eventstream--$(EXTVERSION).sql, is these parts in this order,
# each beside the C of the module it serves.  An object comes after what
# creating it needs: a table before the views over it, the triggers on it
# and the functions taking or returning its rows; a function before the
# triggers and views that call it.  Function bodies may call what a later
# part defines: they are not checked while an extension script runs
# (BEGIN ATOMIC bodies excepted).  Hence site.sql first (CREATE EXTENSION
# stops there unless the library is preloaded), then the helpers both
# sides use, the producer's parts (update_log.sql before consumers.sql,
# whose view reads the log; capture.sql after the consumer_table and
# child_table its triggers are on), the consumer's (producers.sql first:
# the others take its tables' rows), and privileges.sql last: it revokes
# PUBLIC's privileges on everything that exists.
SQL_PARTS = \
	src/site/site.sql \
	src/site/tables.sql \
	src/producer/update_log.sql \
	src/producer/document.sql \
	src/producer/consumers.sql \
	src/producer/capture.sql \
	src/producer/added.sql \
	src/producer/serve.sql \
	src/producer/retention.sql \
	src/producer/keys.sql \
	src/consumer/producers.sql \
	src/consumer/pull.sql \
	src/consumer/dependencies.sql \
	src/consumer/apply.sql \
	src/consumer/mapping.sql \
	src/site/privileges.sql

# Constants the SQL and the C share, defined here only: make writes each
# into the install script where a part says @NAME@, and passes it to the C
# compiler as ES_NAME.
#   PAGE_LIMIT        the most updates a page may hold (limit= of a pull)
#   PAGE_DEFAULT      the updates (or documents, of a snapshot) a page
#                     holds when a pull gives no limit=
#   DOCUMENT_LIMIT    the most documents a snapshot page, or docnames a
#                     filtered look-up, may hold
#   PROTOCOL_VERSION  the version of the protocol between sites, sent in
#                     the Eventstream-Protocol header (docs/protocol.md)
PAGE_LIMIT = 10000
PAGE_DEFAULT = 100
DOCUMENT_LIMIT = 1000
PROTOCOL_VERSION = 2
SQL_CONSTANTS = PAGE_LIMIT PAGE_DEFAULT DOCUMENT_LIMIT PROTOCOL_VERSION
PG_CPPFLAGS += $(foreach c,$(SQL_CONSTANTS),-DES_$(c)=$($(c)))
# The C knows its version too (the health answer, the HTTP client's name).
PG_CPPFLAGS += -DES_VERSION='"$(EXTVERSION)"'

# make installcheck runs the regression and isolation tests the PGXS way,
# against the running server that PGHOST, PGPORT (and the other libpq
# variables) name, in a database contrib_regression (isolation_regression)
# it makes again.  That server must preload the library and allow prepared
# transactions, as test/eventstream.conf sets: one line of its
# postgresql.conf, include '/path/to/eventstream/test/eventstream.conf',
# and a restart.  pg_regress reads test/sql/ and test/expected/, the
# isolation tester test/specs/ and test/expected/; their results go to
# results/ and output_iso/ of the build directory.
#
# With ES_TEMP_INSTANCE=1 (test/run.sh) each layer runs against temporary
# instances instead, started with test/eventstream.conf on free ports, and
# the TAP tests (test/t/, their own clusters) run too; PROVE_TESTS names
# some of them.
REGRESS = capture diff children conditions consumers serve retention keys apply apply_replica mapping plpgsql added_columns truncate
REGRESS_OPTS = --inputdir=$(srcdir)/test
ISOLATION = out_of_order_commit concurrent_capture
ISOLATION_OPTS = --inputdir=$(srcdir)/test
ifdef ES_TEMP_INSTANCE
REGRESS_OPTS += --temp-instance=tmp_check_regress --temp-config=$(srcdir)/test/eventstream.conf
ISOLATION_OPTS += --temp-instance=tmp_check_iso --temp-config=$(srcdir)/test/eventstream.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

eventstream--$(EXTVERSION).sql: $(SQL_PARTS) $(firstword $(MAKEFILE_LIST))
	{ echo '-- $@, built by make from the SQL_PARTS the Makefile lists: edit those.'; \
	  for f in $(filter %.sql,$^); do \
		echo; sed $(foreach c,$(SQL_CONSTANTS),-e 's/@$(c)@/$($(c))/g') "$$f"; \
	  done; } > $@.tmp
	@if grep -n '@[A-Z][A-Z_]*@' $@.tmp; then \
		echo '$@: a part names a constant that SQL_CONSTANTS does not list' >&2; \
		rm -f $@.tmp; exit 1; \
	fi
	mv $@.tmp $@

# The update script from PREVIOUS: the hand-written part (tables, columns,
# indexes, event triggers, objects dropped or whose signature changed, what
# runs once), then every function, procedure, view and trigger of the new
# install script again as CREATE OR REPLACE, with its comments, privileges
# and configuration tables (sql/rerunnable.pl picks them), then the
# hand-written part that needs those (an event trigger on a new function).
# test/t/022_upgrade.pl compares an updated database with a fresh one.
eventstream--$(PREVIOUS)--$(EXTVERSION).sql: sql/update--$(PREVIOUS)--$(EXTVERSION).sql \
		eventstream--$(EXTVERSION).sql sql/rerunnable.pl sql/update--$(PREVIOUS)--$(EXTVERSION)-after.sql
	{ echo '-- $@, built by make from sql/update--$(PREVIOUS)--$(EXTVERSION).sql,'; \
	  echo '-- the install script of $(EXTVERSION) and sql/update--$(PREVIOUS)--$(EXTVERSION)-after.sql: edit those.'; \
	  echo; cat $(srcdir)/sql/update--$(PREVIOUS)--$(EXTVERSION).sql; \
	  echo; echo '-- Every function, procedure, view and trigger of $(EXTVERSION) again, with comments and privileges.'; \
	  echo; $(PERL) $(srcdir)/sql/rerunnable.pl eventstream--$(EXTVERSION).sql; \
	  cat $(srcdir)/sql/update--$(PREVIOUS)--$(EXTVERSION)-after.sql; } > $@.tmp
	mv $@.tmp $@

# Out of tree, the objects' folders are made first (named by absolute
# paths, which VPATH does not look up in the source tree).
ifdef VPATH
es_objdirs := $(addprefix $(CURDIR)/,$(sort $(dir $(OBJS))))
$(OBJS): | $(es_objdirs)
$(es_objdirs):
	$(MKDIR_P) $@
endif
