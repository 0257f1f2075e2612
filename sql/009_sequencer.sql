-- Commit keys assigned by the hub after the commit, not by the writer during it.
--
-- 006 gave every transaction that wrote the outbox its key at COMMIT, from a deferred trigger:
-- a marker row, a second trigger, two advisory locks, a nextval and a hub.commits row in every
-- application transaction. Measured with pgbench (one-row inserts into guarantees, PostgreSQL 15,
-- this 2-core machine, capture on and off alternating): with 4 writers that machinery cost the
-- writers 29 µs of backend CPU per transaction (77 µs with it, 48 µs without, 23 µs with capture
-- off), and throughput 8.1 k/s against 10.0 k/s without it (12.3 k/s off): the advisory lock
-- table, the key sequence and the hub.commits index were hot spots every writer queued on.
-- Now a writer's transaction writes its outbox rows and nothing else; hub.sequence(), which
-- every hub reader calls before it reads, gives keys to the transactions that have committed
-- since the last call, in one transaction of its own.
--
-- ## hub.sequence(): which transactions have committed since the last call
--
-- State (hub.commit_state, one row, written only by hub.sequence under its lock): `last_seq`,
-- the last key given out; `horizon` and `in_flight`, what the call that wrote them saw: every
-- transaction id below `horizon` that is not in `in_flight` had ended when that call looked, and if it
-- committed rows to the outbox they have a key. A call:
--   1. takes the sequencer lock (transaction-scoped advisory lock 7340112009): calls are
--      serialized, and each one, coming after the previous one's commit (the lock is released
--      after the commit is visible: see 006 for the order in CommitTransaction), reads its state;
--   2. takes a snapshot S (after the lock: READ COMMITTED, refused otherwise);
--   3. candidates: the ids in `in_flight` that have ended in S, and the ids in [horizon, S.xmax) not in
--      flight in S, that have rows in the outbox (visible: they committed; an aborted
--      transaction's rows are never visible, and it gets nothing);
--   4. gives them keys last_seq + 1, last_seq + 2, ... (in transaction id order) in hub.commits,
--      with the time of the transaction's last captured row;
--   5. records last_seq and the new horizon = S.xmax, in_flight = S.xip (below S.xmax, every id
--      not in S.xip has ended, and those with rows got a key in this call or an earlier one).
-- A transaction that ended in S is ended in every later snapshot, and its rows are visible or
-- not for good: so the outbox scan (a later statement than S) sees exactly what S would for the
-- candidates. Transaction ids are top-level (the outbox's txid default, pg_current_xact_id(), is
-- the top-level id also inside a savepoint), as are a snapshot's xip entries.
--
-- Consequences:
-- * One global order: keys are given under one lock, in increasing order, each call's keys
--   committed at once (one transaction) before the next call starts; every node reads the same
--   hub.commits. There are no holes (a call that fails commits none of its keys, and the next
--   call gives the same numbers), so a reader never waits for a key it cannot see.
-- * No skips: a transaction is given a key only after it has committed, and every committed
--   transaction with outbox rows is given one by the first call whose snapshot sees it ended
--   (it stays in `in_flight`, or in the range above `horizon`, until then).
-- * Delay: nothing that is still open delays anything (its id waits in `in_flight`, an array); a
--   committed transaction is delivered after the next call of any hub node. A long transaction
--   elsewhere in the cluster costs one entry of `in_flight`, and delays nothing.
-- * hub.commit_frontier() is last_seq + 1: every key below it has committed (is visible to any
--   statement that starts after the call returns), and no key below it will ever be added.
-- * Snapshot + since (src/db/snapshot.ts): a snapshot reads F = hub.commit_frontier() before its
--   REPEATABLE READ snapshot, and its cursor is (F, 0). What it sees beyond that (committed
--   transactions with keys >= F, and committed transactions no call has given a key yet: their
--   ids are in the `in_flight` it sees, or at or above its `horizon`) gets keys >= F and comes after the
--   cursor; the snapshot subtracts their rows again.
-- * The wake-up handshake of 005 is unchanged: a reader's pass is hub.sequence() and then the
--   read, so a pass reads every transaction that had committed when it started, as before.
-- * Cost: none in the application's transactions. Per call with nothing new: one lock, one
--   snapshot, an index probe of the outbox; with new commits a small write transaction whose
--   commit waits for its WAL flush (a key that a crash could take back after a client saw it
--   would be reused for another transaction: it must be durable before it is read).
--   A call that finds no new commits writes nothing, or (at most every 100 ms) moves its horizon
--   with synchronous_commit off: losing that write in a crash leaves an older horizon, which is still
--   true (every later call re-checks from it), and WAL is flushed in order, so a later key
--   that reached the disk carries it with it.
-- * A call gives at most `max_txs` keys from the range above `horizon` (catching up after the hub
--   was down): then its horizon stops after the last one it gave, and the next call goes on.
--   The ended ids of `in_flight` (at most one per connection) are always taken whole.
--
-- Keys continue after the last one 006 gave (its sequence's last value, or the largest key),
-- so cursors issued before this migration keep their place; 006's holes (aborted transactions)
-- are all below the frontier, and readers skip them as before. 006's triggers, marker table and
-- sequence go: the application's roles no longer need INSERT on hub.commits, hub.commit_marks
-- or USAGE on hub.commit_seq; the hub's role needs INSERT on hub.commits and UPDATE on
-- hub.commit_state (it calls hub.sequence).

-- No transaction that wrote the outbox is still open past this point (writers need ROW
-- EXCLUSIVE), and none starts until this migration commits: every row has its key from 006.
LOCK TABLE hub.outbox IN EXCLUSIVE MODE;

DROP TRIGGER hub_commit_mark ON hub.outbox;
DROP TRIGGER hub_commit_key ON hub.commit_marks;
DROP FUNCTION hub.mark_commit();
DROP FUNCTION hub.take_commit_key();
DROP TABLE hub.commit_marks;

CREATE TABLE hub.commit_state (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  last_seq bigint NOT NULL,
  horizon xid8 NOT NULL,
  in_flight xid8[] NOT NULL,
  sequenced_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The horizon of this migration: whatever is in flight now (its rows, if it writes any after
-- this commits, are taken when it ends), including this transaction itself (a snapshot does
-- not list its own transaction).
INSERT INTO hub.commit_state (last_seq, horizon, in_flight)
SELECT greatest(coalesce(pg_sequence_last_value('hub.commit_seq'), 4611686018427387903),
                coalesce((SELECT max(seq) FROM hub.commits), 4611686018427387903)),
       pg_snapshot_xmax(pg_current_snapshot()),
       ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())) || pg_current_xact_id();

DROP SEQUENCE hub.commit_seq;

-- One key per transaction, enforced (and the lookup of a transaction's key).
CREATE UNIQUE INDEX commits_txid_key ON hub.commits (txid);

/**
 * Gives commit keys to the transactions that have committed outbox rows since the last call, and
 * returns the commit frontier after it (every key below it is committed). With `wait` false it
 * returns NULL at once if another call holds the sequencer lock. See the argument above.
 */
CREATE FUNCTION hub.sequence(wait boolean DEFAULT true, max_txs integer DEFAULT 5000) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  st hub.commit_state;
  s_xmax xid8;
  s_xip xid8[];
  ended xid8[] := '{}';
  fresh xid8[];
  next_xmax xid8;
  n bigint;
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
    -- A call never waits long: the lock is held for one call's few statements (unless someone
    -- holds it in a longer transaction; then the caller fails, and says so, rather than hang).
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM pg_advisory_xact_lock(7340112009);
  ELSIF NOT pg_try_advisory_xact_lock(7340112009) THEN
    RETURN NULL;
  END IF;
  SELECT c.*, pg_snapshot_xmax(s), ARRAY(SELECT pg_snapshot_xip(s))
  INTO STRICT st.only_row, st.last_seq, st.horizon, st.in_flight, st.sequenced_at, s_xmax, s_xip
  FROM hub.commit_state c, pg_current_snapshot() s;
  -- 3. Ended since the last call and in flight then: at most one per connection, probed by id.
  IF cardinality(st.in_flight) > 0 THEN
    ended := ARRAY(
      SELECT x FROM unnest(st.in_flight) x
      WHERE x <> ALL (s_xip) AND EXISTS (SELECT 1 FROM hub.outbox o WHERE o.txid = x));
  END IF;
  -- ...and those above the last horizon, one index probe per transaction (a loose scan: a bulk
  -- statement's rows are not read one by one), in id order, at most max_txs.
  fresh := ARRAY(
    WITH RECURSIVE r(x) AS (
      SELECT (SELECT o.txid FROM hub.outbox o WHERE o.txid >= st.horizon AND o.txid < s_xmax ORDER BY o.txid LIMIT 1)
      UNION ALL
      SELECT (SELECT o.txid FROM hub.outbox o WHERE o.txid > r.x AND o.txid < s_xmax ORDER BY o.txid LIMIT 1)
      FROM r WHERE r.x IS NOT NULL
    )
    SELECT x FROM r WHERE x IS NOT NULL AND x <> ALL (s_xip) LIMIT max_txs);
  IF cardinality(fresh) = max_txs THEN
    -- Stop after the last one taken; the rest of the range is the next call's.
    next_xmax := (fresh[max_txs]::text::numeric + 1)::text::xid8;
  ELSE
    next_xmax := s_xmax;
  END IF;
  n := cardinality(ended) + cardinality(fresh);
  IF n = 0 THEN
    -- Nothing new: the recorded horizon is still true. It is moved at most every 100 ms (so
    -- that rows of a transaction still in flight above it are not probed past by every call),
    -- and without waiting for the flush.
    IF st.sequenced_at > clock_timestamp() - interval '100 milliseconds' THEN
      RETURN st.last_seq + 1;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  -- 4. Their keys, and 5. the new horizon (only what is below it matters in in_flight).
  WITH k AS (
    INSERT INTO hub.commits (seq, txid, committed_at)
    SELECT st.last_seq + row_number() OVER (ORDER BY x), x,
           coalesce((SELECT o.committed_at FROM hub.outbox o WHERE o.txid = x ORDER BY o.id DESC LIMIT 1), clock_timestamp())
    FROM unnest(ended || fresh) x
    RETURNING 1
  )
  UPDATE hub.commit_state SET last_seq = st.last_seq + (SELECT count(*) FROM k), horizon = next_xmax,
    in_flight = ARRAY(SELECT x FROM unnest(s_xip) x WHERE x < next_xmax), sequenced_at = clock_timestamp();
  RETURN st.last_seq + n + 1;
END
$$;

/** Every key below the result has committed, and none below it will be added (see above). */
CREATE OR REPLACE FUNCTION hub.commit_frontier() RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT last_seq + 1 FROM hub.commit_state $$;
