-- An ALTER TABLE of a watched table keeps the enabled state of its capture triggers.
--
-- 005's event trigger hub_rewatch regenerates the capture of every watched table an ALTER TABLE
-- touched, by calling hub.watch, which drops and re-creates the four hub_capture_* triggers. A
-- trigger is created enabled (pg_trigger.tgenabled 'O'), and `ALTER TABLE … DISABLE TRIGGER …`
-- is itself an ALTER TABLE: so `ALTER TABLE guarantees DISABLE TRIGGER USER` (an operator pausing
-- capture for a bulk load, say) ran, hub_rewatch fired at its ddl_command_end, and the triggers
-- were back to 'O' before the statement returned. The same for DISABLE TRIGGER hub_capture_insert
-- and ENABLE REPLICA / ALWAYS TRIGGER, and for any later ALTER (ADD COLUMN …) of a table whose
-- capture had been switched off: every one switched it back on, silently.
--
-- Now hub.rewatch reads, per table, the state of its hub_capture_* triggers after the ALTER and
-- before hub.watch (that is the state the ALTER left: what it set, and what it did not touch),
-- regenerates, and puts back every state that is not 'O' with one ALTER TABLE on the new
-- triggers (D: DISABLE TRIGGER, R: ENABLE REPLICA TRIGGER, A: ENABLE ALWAYS TRIGGER). The
-- regeneration itself is as in 005 (new column types get the matching read, a renamed or dropped
-- column leaves the allow-list, the election and committee columns cannot go), so a disabled
-- capture that is enabled again runs a function made for the table as it is then.
--
-- That ALTER TABLE fires ddl_command_end again, inside this function. Unguarded, the nested call
-- would regenerate again (re-enabling), restore again, and so on until PostgreSQL stops it with
-- "stack depth limit exceeded", failing the operator's ALTER (tried). So the function sets the
-- transaction-local `hub.rewatching` to 'on' around the restoring ALTER and returns at once when
-- it finds it 'on', and sets it back to 'off' right after: a later ALTER in the same transaction
-- is rewatched as usual. If the restoring ALTER fails, the error aborts the ALTER's transaction
-- (or subtransaction), which undoes the setting with everything else. (A session that sets
-- hub.rewatching to 'on' itself turns hub_rewatch off for itself; nothing in the hub does.)
--
-- Not changed: an explicit `SELECT hub.watch(…)` by the operator re-creates the triggers enabled,
-- as before: calling it says "capture this table as follows", and it also re-enables a watch that
-- was disabled. A trigger that was missing (dropped by hand) comes back enabled, as in 005.
--
-- Still regenerated when the ALTER changed nothing hub.watch reads (DISABLE TRIGGER only): what
-- the generated function depends on is the table's schema and name, its primary key, the names,
-- order and (domain base) types of its columns; a record of that "shape" would have to be written
-- by every hub.watch (which 005 defines and this file would have to replace) or taken by a second
-- event trigger at ddl_command_start, and a stale record would skip a regeneration that was
-- needed. Regenerating is idempotent; it costs DROP TRIGGER's ACCESS EXCLUSIVE lock on the table
-- until the ALTER's transaction ends (DISABLE TRIGGER alone takes SHARE ROW EXCLUSIVE), as in 005.

/**
 * The generated functions name the table's columns and read integer ids typed, so an ALTER TABLE
 * could leave one that fails the application's writes. This event trigger regenerates the watch
 * of every watched table an ALTER TABLE touched, in the same transaction, and keeps the enabled
 * state the ALTER left on its hub_capture_* triggers (see above and sql/005_capture.sql).
 * SECURITY DEFINER: whoever may ALTER the table may regenerate its capture, without rights on
 * schema hub.
 */
CREATE OR REPLACE FUNCTION hub.rewatch() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  w record;
  keep text[];
  restore text;
BEGIN
  IF current_setting('hub.rewatching', true) = 'on' THEN
    RETURN;  -- our own restoring ALTER TABLE below
  END IF;
  FOR w IN
    SELECT DISTINCT h.tbl, h.kind, h.election_column, h.committee_column, h.columns
    FROM pg_event_trigger_ddl_commands() c JOIN hub.watched h ON h.tbl = c.objid
    WHERE c.classid = 'pg_class'::regclass
      AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = h.tbl AND t.tgname = 'hub_capture_insert')
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = w.tbl AND a.attname = w.election_column AND a.attnum > 0 AND NOT a.attisdropped)
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = w.tbl AND a.attname = w.committee_column AND a.attnum > 0 AND NOT a.attisdropped) THEN
      RAISE EXCEPTION 'hub: % is watched with election column % and committee column %, and this ALTER TABLE removes one of them', w.tbl, w.election_column, w.committee_column
        USING HINT = 'In one transaction: drop its hub_capture_insert, _update, _delete and _truncate triggers, ALTER the table, then call hub.watch with the new column names.';
    END IF;
    -- The states to put back, as one ALTER TABLE's subcommands (NULL: every trigger is 'O').
    SELECT string_agg(format('%s TRIGGER %I',
             CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA' WHEN 'A' THEN 'ENABLE ALWAYS' END,
             t.tgname), ', ' ORDER BY t.tgname)
      INTO restore
    FROM pg_trigger t
    WHERE t.tgrelid = w.tbl AND t.tgenabled IN ('D', 'R', 'A')
      AND t.tgname IN ('hub_capture_insert', 'hub_capture_update', 'hub_capture_delete', 'hub_capture_truncate');
    SELECT array_agg(x ORDER BY o) INTO keep FROM unnest(w.columns) WITH ORDINALITY AS u(x, o)
    WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = w.tbl AND a.attname::text = x AND a.attnum > 0 AND NOT a.attisdropped);
    PERFORM hub.watch(w.tbl, w.kind, w.election_column, w.committee_column,
                      CASE WHEN w.columns IS NULL THEN NULL ELSE coalesce(keep, '{}') END);
    IF restore IS NOT NULL THEN
      PERFORM set_config('hub.rewatching', 'on', true);
      EXECUTE format('ALTER TABLE %s %s', w.tbl, restore);
      PERFORM set_config('hub.rewatching', 'off', true);
    END IF;
  END LOOP;
END
$$;
