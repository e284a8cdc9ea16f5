-- Every PL/pgSQL function of the extension passes plpgsql_check: a name
-- that is both a parameter and a column of a table the function reads
-- (ambiguous), a column or table that does not exist, a wrong number of
-- INTO targets.  PL/pgSQL finds these only when the statement first runs,
-- which for an error path may be in production.  A trigger function is
-- checked against the table its trigger is on; the event trigger is not
-- checked (plpgsql_check cannot).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventstream;
RESET client_min_messages;
CREATE EXTENSION plpgsql_check;
-- The checker finds the kind of mistake it is here for.
CREATE FUNCTION pg_temp.collides(producer_url text, error text) RETURNS void
	LANGUAGE plpgsql AS $$
BEGIN
	UPDATE eventstream.producer_table t SET snapshot_error = error WHERE t.producer_url = collides.producer_url;
END
$$;
SELECT sqlstate, message FROM plpgsql_check_function_tb('pg_temp.collides(text,text)') WHERE level = 'error';
-- How many functions are checked (a new one is counted without a change
-- here; a checker that checks nothing fails).
SELECT count(*) > 50 AS checked
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
 WHERE p.pronamespace = 'eventstream'::regnamespace;
-- No errors.
SELECT p.oid::regprocedure AS function, c.lineno, c.sqlstate, c.message
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
 CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid,
		relid => coalesce((SELECT min(g.tgrelid::oid) FROM pg_trigger g WHERE g.tgfoid = p.oid), 0)::regclass,
		fatal_errors => false, other_warnings => false, extra_warnings => false,
		performance_warnings => false) c
 WHERE p.pronamespace = 'eventstream'::regnamespace AND p.prorettype <> 'event_trigger'::regtype
   AND c.level = 'error'
 ORDER BY 1, 2;
DROP EXTENSION plpgsql_check;
