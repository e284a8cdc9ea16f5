#!/usr/bin/env bash
# test/demo.sh -- set up (test/setup.sh), then show eventstream at work: two
# sites in one throwaway server.  "hq" (the producer) keeps items, customers
# and sales invoices; "branch" (the consumer) subscribes to them over HTTP,
# HQ's admin approves, and HQ's changes reach the branch by themselves.
#
# The server itself listens on a Unix socket in a private directory only;
# the two sites' HTTP endpoints listen on free loopback ports picked now.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

DEMO=$(mktemp -d /tmp/eventstream-demo.XXXXXX)
chown postgres:postgres "$DEMO"
cleanup() {
	$as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT

free_port() {
	perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0)->sockport'
}
HQ_PORT=$(free_port)
BRANCH_PORT=$(free_port)
while [ "$BRANCH_PORT" = "$HQ_PORT" ]; do BRANCH_PORT=$(free_port); done

$as_pg "$PG_BIN/initdb" -D "$DEMO/data" -A trust -U postgres >/dev/null
cat >> "$DEMO/data/postgresql.conf" <<CONF
shared_preload_libraries = 'eventstream'
listen_addresses = ''
unix_socket_directories = '$DEMO'
CONF
$as_pg "$PG_BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null

psql_at() {		# psql_at DB [options]: run SQL from standard input, echoed
	local db=$1
	shift
	$as_pg "$PG_BIN/psql" -h "$DEMO" -X -q -v ON_ERROR_STOP=1 "$@" "$db"
}
$as_pg "$PG_BIN/psql" -h "$DEMO" -X -q -v ON_ERROR_STOP=1 postgres <<SQL
CREATE DATABASE hq;
ALTER DATABASE hq SET eventstream.http_port = $HQ_PORT;
CREATE DATABASE branch;
ALTER DATABASE branch SET eventstream.http_port = $BRANCH_PORT;
SQL

echo "== hq (http://127.0.0.1:$HQ_PORT), the producer: its tables, and a role for the branch"
psql_at hq -a <<'SQL'
CREATE EXTENSION eventstream;
CREATE TABLE item (item_code text PRIMARY KEY, item_name text, rate numeric(10,2));
CREATE TABLE customer (name text PRIMARY KEY, territory text);
CREATE TABLE sales_invoice (name text PRIMARY KEY, customer text NOT NULL REFERENCES customer,
							docstatus int NOT NULL DEFAULT 0, total numeric(12,2));
CREATE TABLE sales_invoice_item (parent text REFERENCES sales_invoice ON DELETE CASCADE,
								 idx int, item_code text REFERENCES item, qty int,
								 PRIMARY KEY (parent, idx));
-- Invoice lines travel inside their invoice.
SELECT eventstream.add_child_table('sales_invoice', 'sales_invoice_item');
-- Rows that exist before the branch subscribes reach it too (initial sync).
INSERT INTO item VALUES ('ITEM-1', 'Laptop', 900);
INSERT INTO customer VALUES ('ACME', 'North');
CREATE ROLE branch_sync;
GRANT SELECT ON item, customer, sales_invoice, sales_invoice_item TO branch_sync;
SQL
read -r KEY SECRET < <(psql_at hq -At -F ' ' -c "SELECT api_key, api_secret FROM eventstream.create_api_key('branch_sync')")
echo "-- SELECT * FROM eventstream.create_api_key('branch_sync') gave key $KEY and a secret (shown once, stored salted and hashed)"

echo
echo "== branch (http://127.0.0.1:$BRANCH_PORT), the consumer: the same tables, a role to apply as, and HQ as producer"
psql_at branch -a -v hq="http://127.0.0.1:$HQ_PORT" -v key="$KEY" -v secret="$SECRET" <<'SQL'
CREATE EXTENSION eventstream;
CREATE TABLE item (item_code text PRIMARY KEY, item_name text, rate numeric(10,2));
CREATE TABLE customer (name text PRIMARY KEY, territory text);
CREATE TABLE sales_invoice (name text PRIMARY KEY, customer text NOT NULL REFERENCES customer,
							docstatus int NOT NULL DEFAULT 0, total numeric(12,2));
CREATE TABLE sales_invoice_item (parent text REFERENCES sales_invoice ON DELETE CASCADE,
								 idx int, item_code text REFERENCES item, qty int,
								 PRIMARY KEY (parent, idx));
CREATE ROLE branch_apply;
GRANT SELECT, INSERT, UPDATE, DELETE ON item, customer, sales_invoice, sales_invoice_item TO branch_apply;
-- Registers with HQ over HTTP before committing; subscriptions start Pending.
SELECT eventstream.add_producer(producer_url => :'hq', api_key => :'key', api_secret => :'secret',
								subscriber => 'branch_apply', tables => ARRAY['item', 'sales_invoice']);
-- Only submitted invoices; customers come along when an invoice needs one.
SELECT eventstream.subscribe(:'hq', 'sales_invoice', condition => 'doc.docstatus = 1');
SELECT ref_table, status, condition FROM eventstream.producer_table ORDER BY ref_table;
SQL

echo
echo "== hq: the admin approves, then business as usual"
psql_at hq -a <<'SQL'
SELECT consumer_url, ref_table, status, condition FROM eventstream.consumer_table ORDER BY ref_table;
SELECT eventstream.approve(consumer_url, ref_table) FROM eventstream.consumer_table;
INSERT INTO item VALUES ('ITEM-2', 'Mouse', 20);
UPDATE item SET rate = 850 WHERE item_code = 'ITEM-1';
BEGIN;   -- a draft invoice: the condition keeps it at HQ
INSERT INTO sales_invoice VALUES ('SINV-1', 'ACME', 0, 1740);
INSERT INTO sales_invoice_item VALUES ('SINV-1', 1, 'ITEM-1', 2), ('SINV-1', 2, 'ITEM-2', 2);
COMMIT;
UPDATE sales_invoice SET docstatus = 1 WHERE name = 'SINV-1';   -- submitted: now it goes
SELECT id, update_type, ref_table, docname, data FROM eventstream.update_log ORDER BY id;
SQL

# The branch's worker pulls by itself (long-poll); wait for it, with a deadline.
for i in $(seq 1 300); do
	done_=$(psql_at branch -At -c "SELECT count(*) FROM sales_invoice_item" 2>/dev/null || echo 0)
	[ "$done_" = 2 ] && break
	sleep 0.1
done

echo
echo "== branch: what arrived, the Event Sync Log, and the producer's status"
psql_at branch -a <<'SQL'
SELECT * FROM item ORDER BY item_code;
SELECT * FROM customer;
SELECT * FROM sales_invoice;
SELECT * FROM sales_invoice_item ORDER BY idx;
SELECT id, update_type, ref_table, status, docname, note FROM eventstream.sync_log ORDER BY id;
SELECT producer_url, state, synced_count, failed_now, tables_approved FROM eventstream.producer_status;
SQL
[ "$done_" = 2 ] || { echo "eventstream demo: the branch did not catch up within 30 s" >&2; tail -n 20 "$DEMO/server.log" >&2; exit 1; }
echo "== demo finished"
