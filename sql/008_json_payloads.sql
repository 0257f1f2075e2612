-- The outbox keeps rows as `json` (their text), not `jsonb`.
--
-- Every captured row is written once and read as text by every hub node (the reader builds each
-- event's frame by concatenating `data::text`, src/db/outbox.ts); nothing indexes or compares the
-- rows as documents. jsonb paid for that twice: the capture converted each row to jsonb's binary
-- form (to_jsonb), and every node's read converted it back to text (jsonb_out). `json` stores the
-- text to_json wrote, and reading it is a copy. Measured on a one-row guarantee of the reference
-- schema (docs/BENCHMARKS.md, "Rows kept as json"):
-- * stored: 147 instead of 188 bytes (WAL per one-row transaction, 4 pgbench writers: 826 instead of 866 bytes);
-- * on the wire: to_json's text is compact (`{"id":1,"status":"pledged",…}`, 143 bytes) where
--   jsonb's text has a space after every colon and comma (150 bytes): every row event is that
--   much smaller for every dashboard;
-- * CPU: building 180 000 rows' payloads took 663 ms with to_json against 962 ms with to_jsonb.
-- The keys of `data` now come in the table's column order (jsonb sorted them by length):
-- a JSON object's members have no order, and the contract promises none.
--
-- What changes:
-- * hub.outbox.data and .old become json (rewritten once, here; the view over them is re-created).
--   row_id stays jsonb (one scalar or key, and tests and operators compare it).
-- * hub.capture_data_expr, which hub.watch calls for the payload expressions, returns to_json of
--   the row. With a column allow-list it returns jsonb_build_object(...)::json: json_build_object
--   would write `"key" : value` with spaces on both sides, more bytes than before. For a table
--   without a one-column primary key it keeps returning jsonb (cast to json on insert): hub.watch
--   (005) pairs such a table's new and old rows with a UNION whose other branch is
--   `NULL::jsonb`, and json and jsonb have no implicit cast to unite them.
-- * Every watched table's capture function is generated again, and the enabled state of its
--   hub_capture_* triggers is kept (as sql/007_rewatch_trigger_state.sql keeps it on ALTER TABLE).
-- The ->> lookups of the reader and the snapshot (ids, counts, old ids) work on json as on jsonb.

DROP VIEW hub.outbox_in_order;
ALTER TABLE hub.outbox ALTER COLUMN data TYPE json USING data::json, ALTER COLUMN old TYPE json USING old::json;

/** The outbox in the one global order (for operators and tests; the hub's own queries join the same way). */
CREATE VIEW hub.outbox_in_order AS
  SELECT c.seq, o.id, o.txid, o.kind, o.action, o.topic, o.election_id, o.committee_id, o.row_id, o.data, o.old,
         c.committed_at, o.committed_at AS captured_at
  FROM hub.commits c JOIN hub.outbox o ON o.txid = c.txid;

/** A row's `data` as json: the whole row, or the allowed columns (names are checked by hub.watch). */
CREATE OR REPLACE FUNCTION hub.capture_data_expr(tbl regclass, keep text[], rel text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary AND i.indnkeyatts = 1) THEN
      CASE WHEN keep IS NULL THEN format('to_jsonb(%s)', rel)
      ELSE 'jsonb_build_object(' || string_agg(format('%L, %s.%I', a.attname, rel, a.attname), ', ' ORDER BY a.attnum) || ')' END
    WHEN keep IS NULL THEN format('to_json(%s)', rel)
    ELSE 'jsonb_build_object(' || string_agg(format('%L, %s.%I', a.attname, rel, a.attname), ', ' ORDER BY a.attnum) || ')::json' END
  FROM pg_attribute a
  WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND (keep IS NULL OR a.attname::text = ANY (keep))
$$;

-- Existing watches get their functions generated again, their triggers' states kept.
DO $$
DECLARE
  w record;
  restore text;
BEGIN
  FOR w IN SELECT * FROM hub.watched ORDER BY tbl::text LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = w.tbl AND t.tgname = 'hub_capture_insert') THEN
      CONTINUE;  -- not captured now (its triggers were dropped by hand): left so
    END IF;
    SELECT string_agg(format('%s TRIGGER %I',
             CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA' WHEN 'A' THEN 'ENABLE ALWAYS' END,
             t.tgname), ', ' ORDER BY t.tgname)
      INTO restore
    FROM pg_trigger t
    WHERE t.tgrelid = w.tbl AND t.tgenabled IN ('D', 'R', 'A')
      AND t.tgname IN ('hub_capture_insert', 'hub_capture_update', 'hub_capture_delete', 'hub_capture_truncate');
    PERFORM hub.watch(w.tbl, w.kind, w.election_column, w.committee_column, w.columns);
    IF restore IS NOT NULL THEN
      PERFORM set_config('hub.rewatching', 'on', true);  -- sql/007: hub_rewatch leaves this ALTER alone
      EXECUTE format('ALTER TABLE %s %s', w.tbl, restore);
      PERFORM set_config('hub.rewatching', 'off', true);
    END IF;
  END LOOP;
END
$$;
