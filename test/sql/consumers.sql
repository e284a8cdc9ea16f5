-- Consumers on the producer: registration, approval states, unsubscribe,
-- and the capture triggers that follow them.
\set SHOW_CONTEXT never
TRUNCATE eventstream.update_log;
CREATE TABLE customer (id int PRIMARY KEY, name text);
CREATE TABLE nokey (a int);
CREATE TABLE hidden (id int PRIMARY KEY);
GRANT SELECT ON customer, nokey TO es_sub;
CREATE FUNCTION captured() RETURNS SETOF regclass LANGUAGE sql AS
	$$ SELECT tgrelid::regclass FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1 $$;

-- Bad input leaves nothing behind.
SELECT register('ftp://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '"customer"');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '[42]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["no_such_table"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["nokey"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["hidden"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer", "public.customer"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["pg_catalog.pg_class"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer; DROP TABLE customer"]');
SELECT count(*) AS consumers FROM eventstream.consumer WHERE consumer_url = 'http://consumer-d';

-- Registration starts Pending and is idempotent; approval states.
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]');
SELECT consumer_url, api_key, role, site_id FROM eventstream.consumer WHERE consumer_url = 'http://consumer-d';
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_while_pending;
SELECT eventstream.approve('http://consumer-d', 'public.customer');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_when_approved;
SELECT eventstream.reject('http://consumer-d', 'customer');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_when_rejected;
INSERT INTO customer VALUES (1, 'rejected: never served');
SELECT eventstream.approve('http://consumer-d', 'customer');
INSERT INTO customer VALUES (2, 'approved');
SELECT n, update_type, docname FROM pull('http://consumer-d');

-- Bad input to approve / reject, and an invalid status.
SELECT eventstream.approve('http://nobody', 'customer');
SELECT eventstream.approve('http://consumer-d', 'item');
SELECT eventstream.reject('http://consumer-d', NULL);
\set VERBOSITY terse
UPDATE eventstream.consumer_table SET status = 'Maybe' WHERE consumer_url = 'http://consumer-d';
\set VERBOSITY default

-- A key of another role cannot take over a registered consumer; a new key
-- of the same role can (the consumer replaced its keys with set_keys()).
CREATE ROLE es_other;
GRANT SELECT ON customer TO es_other;
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]', 'someone-else', 'es_other');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]', 'key-a2');
SELECT api_key FROM eventstream.consumer WHERE consumer_url = 'http://consumer-d';
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]', 'key-a');

-- Two consumers: capture stays while any of them is approved and subscribed.
SELECT register('http://consumer-e', '00000000-0000-0000-0000-00000000000e', '["customer"]');
SELECT eventstream.approve('http://consumer-e', 'customer');
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '[{"ref_table": "customer", "unsubscribed": true}]');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_for_e;
UPDATE customer SET name = 'seen by e only' WHERE id = 2;
SELECT n, update_type, docname FROM pull('http://consumer-d');
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-e');
SELECT count(*) AS receipts_of_e FROM eventstream.update_log_consumer WHERE consumer_url = 'http://consumer-e';
SELECT eventstream.remove_consumer('http://consumer-e');
SELECT count(*) AS receipts_of_e FROM eventstream.update_log_consumer WHERE consumer_url = 'http://consumer-e';
SELECT eventstream.remove_consumer('http://consumer-e');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_after_all_left;

-- Re-subscribing brings capture back; changes made meanwhile are not
-- served (the consumer's initial sync covers them).
UPDATE customer SET name = 'while unsubscribed' WHERE id = 2;
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["customer"]');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_again;
UPDATE customer SET name = 'back' WHERE id = 2;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-d');

-- Tables left out of a registration are dropped from the subscription.
SELECT register('http://consumer-d', '00000000-0000-0000-0000-00000000000d', '["public.note"]');
SELECT 'public.customer'::regclass IN (SELECT captured()) AS captured_after_drop;

-- A subscribed table that cannot be served any more (SELECT revoked,
-- dropped, renamed) does not fail the registration: it is kept, reported
-- with an error, and can be unsubscribed; a table new to the registration
-- must still be valid.
CREATE TABLE broken_a (id int PRIMARY KEY);
CREATE TABLE broken_b (id int PRIMARY KEY);
CREATE TABLE broken_c (id int PRIMARY KEY);
GRANT SELECT ON broken_a, broken_b, broken_c TO es_sub;
SELECT jsonb_array_length(register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb', '["broken_a", "broken_b"]')) AS tables;
REVOKE SELECT ON broken_a FROM es_sub;
DROP TABLE broken_b;
SELECT jsonb_pretty(register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb',
							 '["broken_a", "broken_b", "broken_c"]'));
-- A new table still has to be subscribable; so does a new condition.
SELECT register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb', '["broken_a", "broken_b", "hidden"]');
SELECT register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb',
				'[{"ref_table": "broken_a", "condition": "doc.id > 1"}, "broken_b", "broken_c"]');
-- Unsubscribing them works; so does leaving them out.
SELECT jsonb_pretty(register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb',
	'[{"ref_table": "broken_a", "unsubscribed": true}, {"ref_table": "broken_b", "unsubscribed": true}, "broken_c"]'));
SELECT ref_table, unsubscribed FROM eventstream.consumer_table WHERE consumer_url = 'http://consumer-b' ORDER BY 1;
SELECT register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb', '["broken_c"]');
-- An unsubscribed entry for a table that cannot be served is accepted
-- and not kept.
SELECT register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb',
				'["broken_c", {"ref_table": "no_such_table", "unsubscribed": true}]');
-- Granted again, the table is served again.
GRANT SELECT ON broken_a TO es_sub;
SELECT register('http://consumer-b', '00000000-0000-0000-0000-0000000000bb', '["broken_a", "broken_c"]');
SELECT eventstream.remove_consumer('http://consumer-b');
