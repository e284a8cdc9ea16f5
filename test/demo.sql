-- The producer half of the seed's story: HQ keeps items, customers and sales
-- invoices; a branch site registers to receive them.
\pset footer off
CREATE EXTENSION eventstream;

CREATE TABLE item (item_code text PRIMARY KEY, item_name text, rate numeric(10,2));
CREATE TABLE customer (name text PRIMARY KEY, territory text);
CREATE TABLE sales_invoice (name text PRIMARY KEY, customer text REFERENCES customer,
							docstatus int NOT NULL DEFAULT 0, total numeric(12,2));
CREATE TABLE sales_invoice_item (parent text REFERENCES sales_invoice ON DELETE CASCADE,
								 idx int, item_code text REFERENCES item, qty int,
								 PRIMARY KEY (parent, idx));
-- Invoice lines travel inside their invoice.
SELECT eventstream.add_child_table('sales_invoice', 'sales_invoice_item');

-- The branch's API role (the HTTP endpoint of a later release registers it).
CREATE ROLE branch_sync;
GRANT SELECT ON item, customer, sales_invoice, sales_invoice_item TO branch_sync;
SELECT eventstream._register_consumer('http://branch-1.example:8000', gen_random_uuid(), 'branch-key',
	'branch_sync', '["item", "customer", {"ref_table": "sales_invoice", "condition": "doc.docstatus = 1"}]')
	AS registration \gset
SELECT consumer_url, ref_table, status, condition FROM eventstream.consumer_table ORDER BY ref_table;

-- The HQ admin approves; capture triggers appear by themselves.
SELECT eventstream.approve('http://branch-1.example:8000', 'item');
SELECT eventstream.approve('http://branch-1.example:8000', 'customer');
SELECT eventstream.approve('http://branch-1.example:8000', 'sales_invoice');
SELECT tgrelid::regclass AS captured_table FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;

-- Business as usual at HQ.
INSERT INTO item VALUES ('ITEM-1', 'Laptop', 900), ('ITEM-2', 'Mouse', 20);
INSERT INTO customer VALUES ('ACME', 'North');
UPDATE item SET rate = 850 WHERE item_code = 'ITEM-1';
UPDATE item SET rate = 850 WHERE item_code = 'ITEM-1';   -- no change, no log
INSERT INTO sales_invoice VALUES ('SINV-1', 'ACME', 0, 1740);
INSERT INTO sales_invoice_item VALUES ('SINV-1', 1, 'ITEM-1', 2), ('SINV-1', 2, 'ITEM-2', 2);
UPDATE sales_invoice SET docstatus = 1 WHERE name = 'SINV-1';   -- submitted: now it matches the condition

-- The Event Update Log.
SELECT id, update_type, ref_table, docname, data FROM eventstream.update_log ORDER BY id;

-- What the branch receives, page by page (3 updates per page).  The
-- consumer stores the cursor of each page with the rows it applied.
CREATE TABLE branch_cursor AS SELECT :'registration'::jsonb->>'cursor' AS cursor;
CREATE FUNCTION branch_pull() RETURNS TABLE (update_type text, ref_table text, docname text, data jsonb, more boolean)
LANGUAGE plpgsql AS $$
DECLARE
	page jsonb := eventstream._pull('http://branch-1.example:8000', (SELECT cursor FROM branch_cursor), 3);
BEGIN
	UPDATE branch_cursor SET cursor = page->>'cursor';
	RETURN QUERY SELECT e->>'update_type', e->>'ref_table', e->>'docname', e->'data', (page->>'more')::boolean
				   FROM jsonb_array_elements(page->'updates') e;
END $$;
\echo == page 1
SELECT * FROM branch_pull();
\echo == page 2
SELECT * FROM branch_pull();
\echo == page 3
SELECT * FROM branch_pull();

\echo == the next pull acknowledges everything; the log can be pruned
SELECT count(*) AS new_updates FROM branch_pull();
SELECT eventstream.prune() AS pruned_logs;
SELECT count(*) AS receipts_left FROM eventstream.update_log_consumer;
