-- The outbox is the truth; NOTIFY is only a wake-up.
--
-- Order: every row records the id of the transaction that wrote it (txid). Readers only
-- read rows whose txid is below the oldest transaction still in flight
-- (pg_snapshot_xmin), in (txid, id) order. A transaction that took its ids early and
-- commits late still has a txid at or above that horizon until it ends, so no reader's
-- cursor can have moved past it: nothing is skipped, and every node computes the same
-- order from the same rows. Cursors are (txid, id) pairs, opaque to clients.
CREATE SCHEMA IF NOT EXISTS hub;

CREATE TABLE hub.outbox (
  txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  id bigint GENERATED ALWAYS AS IDENTITY,
  kind text NOT NULL,              -- watched kind ('guarantee', 'attendance', 'vote', ...) or 'app'
  action text NOT NULL,            -- created/updated/deleted, or the application's event type
  topic text,                      -- application events only
  election_id bigint,
  committee_id bigint,
  row_id jsonb,
  data jsonb,
  old jsonb,                       -- previous row of an update (lets snapshots be cut at a cursor)
  committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (txid, id)
);

-- What the hub pruned: a `since` cursor below this answers `resync`.
CREATE TABLE hub.outbox_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  pruned_txid xid8 NOT NULL DEFAULT '0'::xid8,
  pruned_id bigint NOT NULL DEFAULT 0
);
INSERT INTO hub.outbox_state DEFAULT VALUES;

CREATE TABLE hub.watched (
  tbl regclass PRIMARY KEY,
  kind text NOT NULL,
  election_column name NOT NULL,
  committee_column name NOT NULL,
  pk_column name
);

-- A cast that never fails: a malformed id must not make the application's write fail.
CREATE FUNCTION hub.to_bigint(v text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN v ~ '^-?[0-9]{1,18}$' THEN v::bigint END
$$;

-- Statement-level capture with transition tables: a 20 000-row statement writes 20 000
-- outbox rows in one INSERT ... SELECT and sends one notification, never one per row.
-- Arguments: kind, election column, committee column, primary-key column (or '').
CREATE FUNCTION hub.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  k text := TG_ARGV[0];
  ecol text := TG_ARGV[1];
  ccol text := TG_ARGV[2];
  pk text := nullif(TG_ARGV[3], '');
  n bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data)
    SELECT k, 'created', hub.to_bigint(j->>ecol), hub.to_bigint(j->>ccol), j->pk, j
    FROM (SELECT to_jsonb(r) AS j FROM new_rows r) s;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data, old)
    SELECT k, 'updated',
           hub.to_bigint(coalesce(a.j, b.j)->>ecol), hub.to_bigint(coalesce(a.j, b.j)->>ccol),
           coalesce(a.j, b.j)->pk, coalesce(a.j, b.j), b.j
    FROM (SELECT to_jsonb(r) AS j FROM new_rows r) a
    FULL JOIN (SELECT to_jsonb(r) AS j FROM old_rows r) b
      ON pk IS NOT NULL AND a.j->pk = b.j->pk;
  ELSE
    INSERT INTO hub.outbox (kind, action, election_id, committee_id, row_id, data)
    SELECT k, 'deleted', hub.to_bigint(j->>ecol), hub.to_bigint(j->>ccol), j->pk, j
    FROM (SELECT to_jsonb(r) AS j FROM old_rows r) s;
  END IF;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN
    -- Identical notifications collapse within a transaction: one wake-up per commit.
    PERFORM pg_notify('hub_outbox', '');
  END IF;
  RETURN NULL;
END
$$;

/** Installs the capture triggers on any table. */
CREATE FUNCTION hub.watch(
  tbl regclass, kind text,
  election_column name DEFAULT 'election_id', committee_column name DEFAULT 'committee_id'
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  pk name;
  args text;
BEGIN
  IF kind !~ '^[a-z][a-z0-9_]{0,40}$' OR kind = 'app' THEN
    RAISE EXCEPTION 'hub.watch: kind must match ^[a-z][a-z0-9_]*$ and not be "app", got %', kind;
  END IF;
  PERFORM 1 FROM pg_attribute WHERE attrelid = tbl AND attname = election_column AND NOT attisdropped;
  IF NOT FOUND THEN RAISE EXCEPTION 'hub.watch: % has no column %', tbl, election_column; END IF;
  PERFORM 1 FROM pg_attribute WHERE attrelid = tbl AND attname = committee_column AND NOT attisdropped;
  IF NOT FOUND THEN RAISE EXCEPTION 'hub.watch: % has no column %', tbl, committee_column; END IF;

  SELECT a.attname INTO pk
  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = tbl AND i.indisprimary AND i.indnkeyatts = 1;

  args := format('%L, %L, %L, %L', kind, election_column, committee_column, coalesce(pk, ''));
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_insert ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_update ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS hub_capture_delete ON %s', tbl);
  EXECUTE format('CREATE TRIGGER hub_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION hub.capture(%s)', tbl, args);
  EXECUTE format('CREATE TRIGGER hub_capture_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                 'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hub.capture(%s)', tbl, args);
  EXECUTE format('CREATE TRIGGER hub_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION hub.capture(%s)', tbl, args);

  INSERT INTO hub.watched (tbl, kind, election_column, committee_column, pk_column)
  VALUES (tbl, kind, election_column, committee_column, pk)
  ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET kind = EXCLUDED.kind, election_column = EXCLUDED.election_column,
    committee_column = EXCLUDED.committee_column, pk_column = EXCLUDED.pk_column;
END
$$;

/** Sends an application event through the outbox, in the caller's transaction. */
CREATE FUNCTION hub.publish(topic text, type text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  e bigint;
  c bigint;
BEGIN
  IF topic IS NULL OR topic !~ '^(election:(\*|[0-9]{1,18})|committee:[0-9]{1,18}|user:[^\s]{1,200})$' THEN
    RAISE EXCEPTION 'hub.publish: topic must be election:*, election:{id}, committee:{id} or user:{sub}, got %', topic;
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
  PERFORM pg_notify('hub_outbox', '');
END
$$;
