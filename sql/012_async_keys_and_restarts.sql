-- Keys given without waiting for the WAL flush; a crash recovery of PostgreSQL opens a new epoch.
--
-- Since 009 a call that gives keys commits synchronously: a key that a crash took back after a
-- client saw it would be given again to another transaction, and a client resuming after it
-- would skip that one. The flush is on the delivery path of every event: a reader's page
-- (hub.next_page, 011) waits for it, and under load it queues behind the writers' own flushes
-- (docs/BENCHMARKS.md, "Keys without the flush").
--
-- Now hub.sequence commits with synchronous_commit off whenever it gives keys, and a key lost in
-- a crash is never given again:
-- * What a crash can take back is a suffix of the calls (WAL is replayed in order, and a call's
--   keys and state are one transaction): after it, the state says `last_seq`, every key above it
--   may have been handed out and lost, and nothing else is.
-- * Whether that can have happened: hub.sequencer_run is an UNLOGGED table with one row (written
--   by this migration, and again by the first call after each crash recovery). PostgreSQL empties every unlogged table at the end of
--   crash recovery (any crash: of the server, or of one backend, after which the postmaster
--   resets all of them; an immediate shutdown; a standby promoted: it has no unlogged data), which
--   is exactly when committed WAL that was not flushed can be gone, and keeps them across a
--   clean shutdown, which flushes everything first. (pg_postmaster_start_time() would not do:
--   after one backend's crash the postmaster stays and only the shared memory is rebuilt.)
--   Checked on a real cluster by bench/crash.ts (test/crash.test.ts): a backend killed right after
--   a call handed out a key; after recovery the key was gone, the table empty, and the next call
--   recorded the range; after a clean restart the key and the row were both there.
-- * A call that finds hub.sequencer_run empty records [last_seq + 1, B) in hub.lost_keys, B
--   being the first key of the next epoch (keys are 2^62 + n; an epoch is 2^32 keys: the next
--   multiple of 2^32 above last_seq), fills hub.sequencer_run, and continues from B. That call
--   commits synchronously: its rows (and any later key) reach no one before the record of the
--   lost range is durable. A range may be recorded where nothing was lost (no key was given
--   after the last flush); it costs the dashboards a fresh snapshot, never an event.
--   The transactions whose keys were lost are still unkeyed in the recovered state (in
--   `in_flight` or above `horizon`), so they get keys at or above B, in order, like any other.
-- * A position P is lost when {L, 0} < P < {B, 0} for a lost range [L, B): it counts events that
--   no longer exist under those keys. A hub whose reader stands in it starts again from B, forgets
--   its replay buffer, closes its sockets with 4009 and recomputes its dashboards; a client that
--   resumes or subscribes `since` a lost position is answered with `resync`, as for a pruned one
--   (src/db/reader.ts, src/hub/delivery.ts). A position at or below {L, 0}, or at or above {B, 0},
--   means what it meant.
-- * Keys without holes (009) now means: without holes except the lost ranges, which readers pass
--   over (every key below the frontier has committed or is in a lost range).
-- * Another node that read keys before the crash is in the same range: every node reads
--   hub.lost_keys when a frontier shows a new epoch.
--
-- A caller other than hub.next_page (a snapshot's cursor, a reader's first head) gets keys the
-- same way: a cursor it hands out can be lost in the same crash and is then answered with resync.
-- The application's transactions are untouched: they commit as the application says.
-- The hub's role needs INSERT on hub.lost_keys and hub.sequencer_run (it calls hub.sequence).

CREATE TABLE hub.lost_keys (
  from_seq bigint PRIMARY KEY,
  to_seq bigint NOT NULL CHECK (to_seq > from_seq),
  found_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- For operators: when the server that found the range started.
  server_started timestamptz NOT NULL DEFAULT pg_postmaster_start_time()
);

CREATE UNLOGGED TABLE hub.sequencer_run (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  since timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Every key so far was committed synchronously: nothing is lost at this migration.
INSERT INTO hub.sequencer_run DEFAULT VALUES;

/** 010's hub.sequence, committing without the flush, and opening an epoch after a restart (above). */
CREATE OR REPLACE FUNCTION hub.sequence(wait boolean DEFAULT true, max_txs integer DEFAULT 5000) RETURNS bigint
LANGUAGE plpgsql
-- Generic plans for its statements: PL/pgSQL kept planning the keying statement (and the probes)
-- afresh at every call, their parameters being arrays whose generic estimate looks worse than
-- the custom plans; every plan here is index probes whatever the values. From a writer's NOTIFY
-- arriving to the call done, keying one transaction: 0.96-1.04 ms with custom plans, 0.69-0.72
-- ms with this (docs/BENCHMARKS.md, "Keys without the flush").
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  st hub.commit_state;
  s_xmax xid8;
  s_xip xid8[];
  ended xid8[] := '{}';
  fresh xid8[];
  next_xmax xid8;
  n bigint;
  epoch_start bigint;
  new_epoch boolean;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'hub.sequence must run at READ COMMITTED: it must see the previous call''s keys after taking the lock';
  END IF;
  IF max_txs IS NULL OR max_txs < 1 THEN
    RAISE EXCEPTION 'hub.sequence: max_txs must be at least 1, got %', max_txs;
  END IF;
  -- 1. The lock, then (a new statement, a new snapshot) the state the previous call committed,
  -- 2. and S, in that same statement.
  IF coalesce(wait, true) THEN
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM pg_advisory_xact_lock(7340112009);
  ELSIF NOT pg_try_advisory_xact_lock(7340112009) THEN
    RETURN NULL;
  END IF;
  SELECT c.*, pg_snapshot_xmax(s), ARRAY(SELECT pg_snapshot_xip(s)), NOT EXISTS (SELECT FROM hub.sequencer_run)
  INTO STRICT st.only_row, st.last_seq, st.horizon, st.in_flight, st.sequenced_at, s_xmax, s_xip, new_epoch
  FROM hub.commit_state c, pg_current_snapshot() s;
  IF new_epoch THEN
    -- The first call since a crash recovery: keys above last_seq may have been handed out and lost.
    epoch_start := 4611686018427387904
      + ((st.last_seq + 1 - 4611686018427387904) / 4294967296 + 1) * 4294967296;
    INSERT INTO hub.lost_keys (from_seq, to_seq) VALUES (st.last_seq + 1, epoch_start);
    INSERT INTO hub.sequencer_run DEFAULT VALUES;
    UPDATE hub.commit_state SET last_seq = epoch_start - 1;
    st.last_seq := epoch_start - 1;
    -- Durable before this call's result (or any later key) reaches anyone.
    PERFORM set_config('synchronous_commit', 'on', true);
  END IF;
  -- 3. Ended since the last call and in flight then: at most one per connection, probed by id.
  IF cardinality(st.in_flight) > 0 THEN
    ended := ARRAY(
      SELECT x FROM unnest(st.in_flight) x
      WHERE x <> ALL (s_xip) AND EXISTS (SELECT 1 FROM hub.outbox o WHERE o.txid = x));
  END IF;
  -- ...and those above the last horizon, one index probe per transaction, in id order.
  fresh := ARRAY(
    WITH RECURSIVE r(x) AS (
      SELECT (SELECT o.txid FROM hub.outbox o WHERE o.txid >= st.horizon AND o.txid < s_xmax ORDER BY o.txid LIMIT 1)
      UNION ALL
      SELECT (SELECT o.txid FROM hub.outbox o WHERE o.txid > r.x AND o.txid < s_xmax ORDER BY o.txid LIMIT 1)
      FROM r WHERE r.x IS NOT NULL
    )
    SELECT x FROM r WHERE x IS NOT NULL AND x <> ALL (s_xip) LIMIT max_txs);
  IF cardinality(fresh) = max_txs THEN
    next_xmax := (fresh[max_txs]::text::numeric + 1)::text::xid8;
  ELSE
    next_xmax := s_xmax;
  END IF;
  n := cardinality(ended) + cardinality(fresh);
  IF n = 0 AND st.sequenced_at > clock_timestamp() - interval '100 milliseconds' THEN
    RETURN st.last_seq + 1;
  END IF;
  IF NOT new_epoch THEN
    -- Without the flush (above); after a new epoch's record it stays synchronous.
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  -- 4. Their keys, in the order of their last captured rows (ids break ties), and 5. the new horizon.
  WITH t AS (
    SELECT x, coalesce((SELECT o.committed_at FROM hub.outbox o WHERE o.txid = x ORDER BY o.id DESC LIMIT 1),
                       clock_timestamp()) AS at
    FROM unnest(ended || fresh) x
  ), k AS (
    INSERT INTO hub.commits (seq, txid, committed_at)
    SELECT st.last_seq + row_number() OVER (ORDER BY t.at, t.x), t.x, t.at FROM t
    RETURNING 1
  )
  UPDATE hub.commit_state SET last_seq = st.last_seq + (SELECT count(*) FROM k), horizon = next_xmax,
    in_flight = ARRAY(SELECT x FROM unnest(s_xip) x WHERE x < next_xmax), sequenced_at = clock_timestamp();
  RETURN st.last_seq + n + 1;
END
$$;
