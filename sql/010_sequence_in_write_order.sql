-- hub.sequence keys the transactions one call finds in the order their rows were written.
--
-- 009 gave them keys in transaction id order. An id is taken at a transaction's first write, so
-- an older transaction can depend on a newer one: it waits (say, for a user), the newer one
-- creates a row and commits, the older one updates that row and commits. When one call finds
-- both (they committed between two calls: at a hub's pass rate, two commits within a
-- millisecond or two), the update got the lower key and a client applied it before the row
-- existed (test/commit-order.test.ts shows it).
--
-- Now a call orders them by the time of their last captured row (hub.outbox.committed_at,
-- clock_timestamp() of the row's insert), then by id. Any captured write a transaction makes
-- after it has seen another's commit is later than every row of that other: whatever one
-- transaction's rows depend on comes first. Transactions that overlap without depending on
-- each other may come in either order, as before. Keys are still given by one call under the
-- lock, so every node reads the same order; nothing else changes (see 009).
--
-- Limit: a call keys at most max_txs transactions from the range above its horizon, taken in
-- id order (catching up after the hubs were down); the order holds within such a piece, not
-- across two.

/** 009's hub.sequence, keying in the order the rows were written (above). */
CREATE OR REPLACE FUNCTION hub.sequence(wait boolean DEFAULT true, max_txs integer DEFAULT 5000) RETURNS bigint
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
  -- 4. Their keys, in the order of their last captured rows (ids break ties), and 5. the new
  -- horizon (only what is below it matters in in_flight).
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
