-- The capture protocol, part 1: the application's writes pay little (issue 14 items 1, 2;
-- issue 11 items 4, 5). 002 and 004 are applied in existing installations and stay as they are.
--
-- ## Wake-ups only when someone sleeps
--
-- PostgreSQL (15, 16) takes one global lock in the pre-commit of every transaction that sent a
-- NOTIFY and holds it until that commit is flushed, so notifying commits serialize (4 writers:
-- 13.1 k/s without capture, 5.0 k/s with a NOTIFY per commit). So a capture sends pg_notify only when some hub
-- reader has declared itself asleep. A reader that read rows in its last pass is busy: it polls
-- again after a short, bounded interval and needs no NOTIFY. A reader that found nothing goes to
-- sleep through the handshake below, and sleeps until a notification, its 1 s backstop poll, or
-- its lease renewal.
--
-- State:
-- - `hub.wake_until`, an UNLOGGED sequence, holds the wake deadline in epoch milliseconds: the
--   largest lease of the readers asleep, 0 when none is. A writer notifies iff
--   `pg_sequence_last_value(hub.wake_until) > now()` (in ms). A sequence's value is not MVCC:
--   setval overwrites it in place, and every later read, in any transaction at any isolation
--   level (a REPEATABLE READ snapshot taken long ago included), sees the new value at once. And
--   an unlogged sequence's setval neither writes WAL nor takes a transaction id. Reading it costs
--   a writer about 0.5 µs (a subquery `SELECT last_value FROM …` cost 2.5 µs).
-- - `hub.sleepers`, an UNLOGGED table: one row per reader, its lease (`asleep_until`) or NULL
--   while it is awake. Only readers touch it, under one transaction-scoped advisory lock, so each
--   sees the others' committed leases when it recomputes the deadline.
--
-- hub.sleep(reader, lease_ms), in a transaction of its own:
--   1. raises hub.wake_until to cover its lease (setval: no xid yet),
--   2. upserts its row: the transaction's first xid, X, is taken only now,
--   3. returns `pending`: every xid that may still be running and is older than X (the xip
--      list of a snapshot taken after step 2, plus [xmax, X) of that snapshot: xids assigned
--      before X that no completed transaction has overtaken are not in the xip list), and
--      `lapsed`: whether this reader's previous lease (if any) had already ended.
-- The reader then, unless it was continuously declared since an earlier complete handshake
-- (`lapsed` false), polls until every xid in `pending` has ended (pg_visible_in_snapshot in a
-- later snapshot) and reads the outbox once more; only if that read is empty (and holds nothing
-- back) does it sleep. After that, while its declaration stays continuous, any empty read may
-- sleep at once: the handshake already covered every writer that read the deadline before it.
--
-- Why no wake-up is lost. Take a writer W whose rows the reader has not read when it sleeps.
-- W's capture runs in an AFTER trigger, so W's xid was assigned (by W's own write to the watched
-- table) before W read the deadline.
-- (a) W read the deadline after step 1: it saw the lease (W's now() is its transaction's start,
--     never later than the read, so a live lease is never seen as expired) and NOTIFYs. The
--     notification reaches the reader's LISTEN connection at W's commit, and the listener is
--     LISTENing before the reader may sleep (src/db/listener.ts reports `listening` only once
--     LISTEN has succeeded, and wakes the reader then and after every reconnect): the reader
--     wakes and reads W's rows (a listener delivers a notification only once the sending
--     transaction is visible to new snapshots).
-- (b) W read the deadline before step 1: then W's xid < X (xids are handed out in one order,
--     and W took its xid before the setval that precedes X). At the snapshot of step 3, W was
--     either completed, and its rows are visible to the re-read, which comes later; or running:
--     in the xip list if below that snapshot's xmax, else in [xmax, X). The reader waits until
--     it has ended, then re-reads: W's rows are visible (or W aborted and has none).
-- Isolation does not matter: W's reading of the deadline is not MVCC, and the argument uses only
-- the order of xid assignment, the setval, and commits.
-- A reader's sleep is continuous while it renews its lease before it ends (every lease/3, 10 s
-- by default); `lapsed` tells it when it did not (an event loop stalled, a clock jumped), and it
-- does the whole handshake again. A crashed or hung node renews nothing: writers stop notifying
-- for it at most one lease later (the deadline is a time, not a count). A reader that has been
-- busy for a while (50 ms of passes that read rows, or found rows held back, at 1 000 rows/s
-- or more) calls hub.awake(),
-- which lowers the deadline to the largest live lease of the others (never below one of theirs:
-- the readers' advisory lock orders it with their hub.sleep), and it is no longer asleep: its
-- next sleep is a new handshake, at a quiet pass once it reads fewer than 500 rows/s (so that a
-- dense stream of writes with short gaps does not flip the writers between notifying and not). A server crash resets both unlogged objects (nobody asleep),
-- and every listener reconnects and reads. hub.publish and any other writer of outbox rows call
-- hub.wake_readers() after writing them, in the same transaction (its xid is taken by then).
--
-- The 1 s backstop poll stays: it covers a listener connection that died without the hub
-- noticing yet (a lost notification costs latency, never an event). Tests disable it.
--
-- ## A capture function per watched table
--
-- hub.watch generates the table's own trigger function: typed column reads (an integer election
-- or committee column is read as bigint; others go through hub.to_bigint, which never fails),
-- `to_jsonb` of the row once. The generic hub.capture of 002 computed `to_jsonb(r)` in every
-- expression that used it: the planner pulls the subquery up, and the inlined hub.to_bigint
-- repeats its argument, so one row's JSON was built ~16 times (a 20 000-row INSERT … SELECT: 36 ms
-- without capture, 230 ms of CPU with 002's trigger, 94 ms with the generated one; see
-- docs/BENCHMARKS.md). Statement-level triggers with transition tables stay: a row-level trigger
-- costs the same for one row and twice as much for a bulk statement.
--
-- `columns` restricts `data` and `old` to those columns plus the primary key, the election and
-- committee columns, and what the totals need (`count` for kind `vote`). A TRUNCATE of a watched
-- table writes one outbox row (action `truncated`, no election or committee, data
-- {"table": "<name>"}), delivered to admins on election:*.

-- ---- wake-ups -------------------------------------------------------------------------------

CREATE UNLOGGED SEQUENCE hub.wake_until AS bigint MINVALUE 0 START 0;
-- Every role that writes watched tables reads it (the deadline says nothing about the data).
GRANT SELECT ON SEQUENCE hub.wake_until TO PUBLIC;

CREATE UNLOGGED TABLE hub.sleepers (
  reader text PRIMARY KEY,
  asleep_until timestamptz,              -- NULL: awake
  pid integer NOT NULL,                  -- the backend that declared it (diagnostics)
  declared_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION hub.epoch_ms(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ceil(extract(epoch FROM t) * 1000)::bigint $$;

/** The writer's side: NOTIFY the hub if a reader sleeps. Call it after writing outbox rows, in the same transaction. */
CREATE FUNCTION hub.wake_readers() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF pg_sequence_last_value('hub.wake_until'::regclass) > date_part('epoch', now()) * 1000 THEN
    PERFORM pg_notify('hub_outbox', '');
  END IF;
END
$$;

/**
 * A reader declares itself asleep for lease_ms (or renews its lease). Must run in a transaction
 * of its own; commits asynchronously. See the argument at the top of this file.
 */
CREATE FUNCTION hub.sleep(reader text, lease_ms integer, OUT lapsed boolean, OUT pending xid8[])
LANGUAGE plpgsql AS $$
DECLARE
  me ALIAS FOR reader;
  prev timestamptz;
  lease_end timestamptz;
  mine xid8;
  snap pg_snapshot;
BEGIN
  IF me IS NULL OR length(me) NOT BETWEEN 1 AND 200 OR lease_ms IS NULL OR lease_ms NOT BETWEEN 1 AND 3600000 THEN
    RAISE EXCEPTION 'hub.sleep: reader must be 1-200 characters and lease_ms 1..3600000, got % and %', me, lease_ms;
  END IF;
  IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
    RAISE EXCEPTION 'hub.sleep must run in a transaction of its own: its xid must come after the deadline it raises';
  END IF;
  PERFORM set_config('synchronous_commit', 'off', true);  -- a lost declaration only means a re-declaration
  PERFORM pg_advisory_xact_lock(7340112002);              -- readers only; writers never take it
  lease_end := clock_timestamp() + lease_ms * interval '1 millisecond';
  SELECT s.asleep_until INTO prev FROM hub.sleepers s WHERE s.reader = me;
  -- 1. The deadline writers read. No xid, no WAL.
  PERFORM setval('hub.wake_until', hub.epoch_ms(greatest(lease_end,
    (SELECT max(s.asleep_until) FROM hub.sleepers s WHERE s.asleep_until > clock_timestamp()))));
  -- 2. The transaction's first xid, after the deadline.
  INSERT INTO hub.sleepers AS s (reader, asleep_until, pid) VALUES (me, lease_end, pg_backend_pid())
  ON CONFLICT ON CONSTRAINT sleepers_pkey DO UPDATE SET asleep_until = EXCLUDED.asleep_until, pid = EXCLUDED.pid, declared_at = clock_timestamp();
  -- 3. Everything older than that xid that may still be running.
  mine := pg_current_xact_id();
  snap := pg_current_snapshot();
  pending := ARRAY(
    SELECT x FROM pg_snapshot_xip(snap) x WHERE x <> mine
    UNION ALL
    SELECT g::text::xid8 FROM generate_series(pg_snapshot_xmax(snap)::text::bigint, mine::text::bigint - 1) g);
  lapsed := prev IS NULL OR prev <= clock_timestamp();
  -- Rows of readers that are awake or long expired (restarted nodes) go; theirs is re-created.
  DELETE FROM hub.sleepers s WHERE s.reader <> me AND (s.asleep_until IS NULL OR s.asleep_until < clock_timestamp() - interval '1 minute');
END
$$;

/** A reader that is awake (busy, or shutting down): writers stop notifying unless another reader sleeps. */
CREATE FUNCTION hub.awake(reader text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  me ALIAS FOR reader;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  PERFORM pg_advisory_xact_lock(7340112002);
  UPDATE hub.sleepers s SET asleep_until = NULL WHERE s.reader = me AND s.asleep_until IS NOT NULL;
  PERFORM setval('hub.wake_until', coalesce(hub.epoch_ms(
    (SELECT max(s.asleep_until) FROM hub.sleepers s WHERE s.asleep_until > clock_timestamp())), 0));
END
$$;

-- ---- capture ---------------------------------------------------------------------------------

ALTER TABLE hub.watched ADD COLUMN columns text[];  -- NULL: every column

/** A row's election or committee column as bigint: typed when the column is an integer. */
CREATE FUNCTION hub.capture_id_expr(tbl regclass, col name, rel text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  t oid;
  base oid;
BEGIN
  SELECT a.atttypid INTO t FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
  base := t;
  WHILE (SELECT typtype FROM pg_type WHERE oid = base) = 'd' LOOP  -- a domain: its base type
    base := (SELECT typbasetype FROM pg_type WHERE oid = base);
  END LOOP;
  IF base IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN
    RETURN format('%s.%I::bigint', rel, col);
  ELSIF base IN ('json'::regtype, 'jsonb'::regtype) THEN
    RETURN format($f$hub.to_bigint(%s.%I #>> '{}')$f$, rel, col);
  END IF;
  RETURN format('hub.to_bigint(%s.%I::text)', rel, col);
END
$$;

/** A row's `data`: the whole row, or the allowed columns (names are checked by hub.watch). */
CREATE FUNCTION hub.capture_data_expr(tbl regclass, keep text[], rel text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN keep IS NULL THEN format('to_jsonb(%s)', rel)
    ELSE 'jsonb_build_object(' || string_agg(format('%L, %s.%I', a.attname, rel, a.attname), ', ' ORDER BY a.attnum) || ')' END
  FROM pg_attribute a
  WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND (keep IS NULL OR a.attname::text = ANY (keep))
$$;

/**
 * Installs the capture triggers (INSERT, UPDATE, DELETE, TRUNCATE) on any table, with a capture
 * function generated for it. `columns`: events carry only those columns, plus the primary key,
 * the election and committee columns and, for kind `vote`, `count`. Calling it again replaces
 * the table's watch.
 */
CREATE FUNCTION hub.watch(
  tbl regclass, kind text,
  election_column name DEFAULT 'election_id', committee_column name DEFAULT 'committee_id',
  columns text[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  k ALIAS FOR kind;
  pk name;
  keep text[];
  unknown text;
  fname text;
  qname text;
  prior oid[];
  ins text; upd text; del text; trunc text;
  e_n text; c_n text; e_o text; c_o text; d_n text; d_o text;
  notify constant text := $n$
    IF written > 0 AND pg_sequence_last_value('hub.wake_until'::regclass) > date_part('epoch', now()) * 1000 THEN
      PERFORM pg_notify('hub_outbox', '');
    END IF;$n$;
BEGIN
  IF k IS NULL OR k !~ '^[a-z][a-z0-9_]{0,40}$' OR k = 'app' THEN
    RAISE EXCEPTION 'hub.watch: kind must match ^[a-z][a-z0-9_]*$ and not be "app", got %', k;
  END IF;
  PERFORM 1 FROM pg_attribute WHERE attrelid = tbl AND attname = election_column AND attnum > 0 AND NOT attisdropped;
  IF NOT FOUND THEN RAISE EXCEPTION 'hub.watch: % has no column %', tbl, election_column; END IF;
  PERFORM 1 FROM pg_attribute WHERE attrelid = tbl AND attname = committee_column AND attnum > 0 AND NOT attisdropped;
  IF NOT FOUND THEN RAISE EXCEPTION 'hub.watch: % has no column %', tbl, committee_column; END IF;
  IF columns IS NOT NULL THEN
    SELECT string_agg(CASE WHEN c IS NULL THEN 'NULL' ELSE format('%I', c) END, ', ') INTO unknown FROM unnest(columns) c
    WHERE c IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname::text = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF unknown IS NOT NULL THEN
      RAISE EXCEPTION 'hub.watch: % has no column % (columns must name columns of the table)', tbl, unknown;
    END IF;
  END IF;

  SELECT a.attname INTO pk
  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = tbl AND i.indisprimary AND i.indnkeyatts = 1;

  IF columns IS NOT NULL THEN
    keep := columns || ARRAY[election_column::text, committee_column::text] || CASE WHEN pk IS NULL THEN '{}'::text[] ELSE ARRAY[pk::text] END
            || CASE WHEN k = 'vote' THEN ARRAY['count'] ELSE '{}'::text[] END;
  END IF;

  SELECT format('%I.%I', s.nspname, c.relname),
         'capture_' || left(regexp_replace(lower(c.relname), '[^a-z0-9_]', '_', 'g'), 30) || '_' || left(md5(s.nspname || '.' || c.relname), 8)
  INTO qname, fname FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE c.oid = tbl;

  e_n := hub.capture_id_expr(tbl, election_column, 'n');
  c_n := hub.capture_id_expr(tbl, committee_column, 'n');
  e_o := hub.capture_id_expr(tbl, election_column, 'o');
  c_o := hub.capture_id_expr(tbl, committee_column, 'o');
  d_n := hub.capture_data_expr(tbl, keep, 'n');
  d_o := hub.capture_data_expr(tbl, keep, 'o');

  ins := format($q$INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data)
      SELECT %L, 'created', %s, %s, %s, %s FROM new_rows n;$q$,
    k, e_n, c_n, CASE WHEN pk IS NULL THEN 'NULL::jsonb' ELSE format('to_jsonb(n.%I)', pk) END, d_n);
  del := format($q$INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data)
      SELECT %L, 'deleted', %s, %s, %s, %s FROM old_rows o;$q$,
    k, e_o, c_o, CASE WHEN pk IS NULL THEN 'NULL::jsonb' ELSE format('to_jsonb(o.%I)', pk) END, d_o);
  IF pk IS NOT NULL THEN
    -- New and old rows pair up by primary key; a row whose key changed comes as two events
    -- (the new row with no `old`, and the old row as both), as 002 did.
    upd := format($q$INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data, old)
      SELECT %1$L, 'updated',
        CASE WHEN n.%2$I IS NOT NULL THEN %3$s ELSE %4$s END,
        CASE WHEN n.%2$I IS NOT NULL THEN %5$s ELSE %6$s END,
        to_jsonb(coalesce(n.%2$I, o.%2$I)),
        CASE WHEN n.%2$I IS NOT NULL THEN %7$s ELSE %8$s END,
        CASE WHEN o.%2$I IS NOT NULL THEN %8$s END
      FROM new_rows n FULL JOIN old_rows o ON n.%2$I = o.%2$I;$q$,
      k, pk, e_n, e_o, c_n, c_o, d_n, d_o);
  ELSE
    upd := format($q$INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data, old)
      SELECT %1$L, 'updated', %2$s, %3$s, NULL::jsonb, %4$s, NULL::jsonb FROM new_rows n
      UNION ALL
      SELECT %1$L, 'updated', %5$s, %6$s, NULL::jsonb, %7$s, %7$s FROM old_rows o;$q$,
      k, e_n, c_n, d_n, e_o, c_o, d_o);
  END IF;
  trunc := format($q$INSERT INTO hub.outbox (kind, action, data) VALUES (%L, 'truncated', jsonb_build_object('table', %L));$q$,
    k, qname);


  EXECUTE format($f$CREATE OR REPLACE FUNCTION hub.%I() RETURNS trigger LANGUAGE plpgsql AS %L$f$, fname,
    format($b$
-- Generated by hub.watch(%L, %L): see sql/005_capture.sql. Do not edit; call hub.watch again.
DECLARE
  written bigint := 1;
BEGIN
  IF TG_OP = 'INSERT' THEN
    %s
  ELSIF TG_OP = 'UPDATE' THEN
    %s
  ELSIF TG_OP = 'DELETE' THEN
    %s
  ELSE
    %s
  END IF;
  IF TG_OP <> 'TRUNCATE' THEN
    GET DIAGNOSTICS written = ROW_COUNT;
  END IF;%s
  RETURN NULL;
END
$b$, qname, k, ins, upd, del, trunc, notify));
  EXECUTE format('COMMENT ON FUNCTION hub.%I() IS %L', fname, format('hub capture for %s (kind %s)', qname, k));

  -- The functions the old triggers ran (002's hub.capture, or this table's under an older name).
  SELECT array_agg(DISTINCT t.tgfoid) INTO prior FROM pg_trigger t
  WHERE t.tgrelid = tbl AND t.tgname IN ('hub_capture_insert', 'hub_capture_update', 'hub_capture_delete', 'hub_capture_truncate');

  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_insert ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_update ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_delete ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_truncate ON %s', tbl);
  EXECUTE format('CREATE TRIGGER hub_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION hub.%I()', tbl, fname);
  EXECUTE format('CREATE TRIGGER hub_capture_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                 'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hub.%I()', tbl, fname);
  EXECUTE format('CREATE TRIGGER hub_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION hub.%I()', tbl, fname);
  EXECUTE format('CREATE TRIGGER hub_capture_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION hub.%I()', tbl, fname);

  -- A generated function no trigger runs any more (the table was renamed) goes.
  DECLARE
    f record;
  BEGIN
    FOR f IN SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
             WHERE p.oid = ANY (coalesce(prior, '{}')) AND s.nspname = 'hub' AND p.proname LIKE 'capture\_%' AND p.proname <> fname
               AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid) LOOP
      EXECUTE format('DROP FUNCTION %s', f.fn);
    END LOOP;
  END;

  INSERT INTO hub.watched (tbl, kind, election_column, committee_column, pk_column, columns)
  VALUES (tbl, k, election_column, committee_column, pk, columns)
  ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET kind = EXCLUDED.kind, election_column = EXCLUDED.election_column,
    committee_column = EXCLUDED.committee_column, pk_column = EXCLUDED.pk_column, columns = EXCLUDED.columns;
END
$$;

-- 002's hub.watch had four arguments; one signature only, or hub.watch('t', 'k') is ambiguous.
DROP FUNCTION hub.watch(regclass, text, name, name);

-- Existing watches get their generated functions (and the TRUNCATE trigger).
DO $$
DECLARE
  w record;
BEGIN
  FOR w IN SELECT * FROM hub.watched ORDER BY tbl::text LOOP
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = w.tbl) THEN
      PERFORM hub.watch(w.tbl, w.kind, w.election_column, w.committee_column, w.columns);
    END IF;
  END LOOP;
  -- 002's generic capture goes unless a trigger made by hand still runs it.
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = 'hub.capture()'::regprocedure) THEN
    DROP FUNCTION hub.capture();
  END IF;
END
$$;

/**
 * The generated functions name the table's columns and read integer ids typed, so an ALTER TABLE
 * could leave one that fails the application's writes (a column renamed or dropped, an id column
 * turned into text holding 'abc'). This event trigger regenerates the watch of every watched
 * table an ALTER TABLE touched, in the same transaction: new types get the matching read, and a
 * renamed or dropped column leaves the allow-list (events never carry more than was allowed). An
 * ALTER that renames or drops the election or committee column is refused instead, with a hint;
 * a table whose hub_capture_* triggers were dropped first (to re-watch it in the same
 * transaction) is left alone. SECURITY DEFINER: whoever may ALTER the table may regenerate its
 * capture, without rights on schema hub.
 */
CREATE FUNCTION hub.rewatch() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  w record;
  keep text[];
BEGIN
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
    SELECT array_agg(x ORDER BY o) INTO keep FROM unnest(w.columns) WITH ORDINALITY AS u(x, o)
    WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = w.tbl AND a.attname::text = x AND a.attnum > 0 AND NOT a.attisdropped);
    PERFORM hub.watch(w.tbl, w.kind, w.election_column, w.committee_column,
                      CASE WHEN w.columns IS NULL THEN NULL ELSE coalesce(keep, '{}') END);
  END LOOP;
END
$$;

-- Only a superuser may create an event trigger (PostgreSQL 15).
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    CREATE EVENT TRIGGER hub_rewatch ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION hub.rewatch();
  ELSE
    RAISE WARNING 'hub: not run as a superuser, so no hub_rewatch event trigger: after an ALTER TABLE of a watched table, call hub.watch on it again';
  END IF;
END
$$;

/** Sends an application event through the outbox, in the caller's transaction (004's, waking only sleepers). */
CREATE OR REPLACE FUNCTION hub.publish(topic text, type text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  e bigint;
  c bigint;
BEGIN
  -- The hub's own topic grammar: ids without leading zeros ('0' itself is an id), in range.
  IF topic IS NULL OR topic !~ '^(election:(\*|0|[1-9][0-9]{0,18})|committee:(0|[1-9][0-9]{0,18})|user:[^\s]{1,200})$'
     OR (topic ~ '^(election|committee):[0-9]' AND hub.to_bigint(substr(topic, strpos(topic, ':') + 1)) IS NULL) THEN
    RAISE EXCEPTION 'hub.publish: topic must be election:*, election:{id}, committee:{id} or user:{sub} (ids without leading zeros), got %', topic;
  END IF;
  IF type IS NULL OR type !~ '^[a-z][a-z0-9_.-]{0,63}$' OR type IN
     ('ping', 'pong', 'subscribed', 'unsubscribed', 'error', 'resync', 'connection_success',
      'guarantee_update', 'attendance_update', 'voting_update', 'dashboard_update') THEN
    RAISE EXCEPTION 'hub.publish: type must match ^[a-z][a-z0-9_.-]*$ and not be a protocol type, got %', type;
  END IF;
  IF topic LIKE 'election:%' AND topic <> 'election:*' THEN
    e := substr(topic, 10)::bigint;
  ELSIF topic LIKE 'committee:%' THEN
    c := substr(topic, 11)::bigint;
    -- Committee events also reach the committee's election topic (same routing as captured rows).
    IF to_regclass('committees') IS NOT NULL THEN
      EXECUTE 'SELECT election_id FROM committees WHERE id = $1' INTO e USING c;
    END IF;
  END IF;
  INSERT INTO hub.outbox (kind, action, topic, election_id, committee_id, data)
  VALUES ('app', type, topic, e, c, payload);
  PERFORM hub.wake_readers();
END
$$;
