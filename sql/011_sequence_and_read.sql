-- One round trip per page: hub.next_page gives keys to what has committed (hub.sequence) and
-- returns the page after a position, in the same call.
--
-- Since 009 a reader's page took two calls: `SELECT hub.sequence()`, then the read. At idle each
-- is a cold round trip (a backend and the hub woken from sleep), and the read is planned apart.
-- Measured from a writer's NOTIFY arriving to the rows in hand, one committed row per NOTIFY,
-- on a 2-core VM (`bench/commit-order.ts --only page`, medians): the two calls 1.33-1.35 ms at
-- idle and 0.83-1.13 ms every 2 ms, this one call 1.00-1.05 and 0.64-0.84 ms, a page with
-- nothing to key 0.72-0.74 and 0.45-0.57 ms (docs/BENCHMARKS.md, "One call per page").
--
-- Nothing about the order changes: the call is hub.sequence(true, 5000) followed, as a new
-- statement of the same function (PL/pgSQL at READ COMMITTED: a new snapshot, which sees the
-- keys this call gave and every key given before the lock was taken), by the read the reader ran
-- on its own before (src/db/outbox.ts had it). The rows come back only after the transaction
-- has committed: the client library resolves the query at ReadyForQuery, after the COMMIT of the
-- implicit transaction, so no key reaches a client before it is durable. A caller must not run
-- it inside a transaction of its own (hub.sequence's lock would be held until that ends).
--
-- The result: every row carries `frontier`, what hub.sequence returned (every key below it has
-- committed). A page with no rows is one row whose columns are all NULL but `frontier`.
-- `fetched` is how many rows the page took before its byte cut (the reader asks for more when a
-- page is full). A key whose transaction left no row after the position comes as one row with
-- `id` NULL: the key exists and is done.

CREATE FUNCTION hub.next_page(after_seq bigint, after_id bigint, max_rows integer, max_bytes bigint)
RETURNS TABLE (
  frontier text, seq text, id text, kind text, action text, topic text, election_id text, committee_id text,
  row_id text, data text, committed_ms float8, fetched integer,
  vote_count text, old_election_id text, old_committee_id text, old_count text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  f bigint;
BEGIN
  IF max_rows IS NULL OR max_rows < 1 OR max_rows > 10000 THEN
    RAISE EXCEPTION 'hub.next_page: max_rows must be 1 to 10000, got %', max_rows;
  END IF;
  f := hub.sequence(true, 5000);
  -- The next keys by the commits index (a constant LIMIT: with a parameter the generic plan does
  -- not know how few are wanted and reads the whole table), each key's rows by the outbox primary
  -- key (txid, id); the running sum of the rows' sizes cuts the page (`data` stays a TOAST
  -- pointer until a row is kept). What the totals need of a row is read here, never by parsing
  -- it: a vote's count, and an update's previous election and committee through the watched
  -- table's column names (the first table of the kind; kinds are expected to share names).
  RETURN QUERY
  WITH tw AS (
    SELECT DISTINCT ON (w.kind) w.kind, w.election_column::text AS ecol, w.committee_column::text AS ccol
    FROM hub.watched w ORDER BY w.kind, w.tbl::text
  ), page AS (
    SELECT l.*, sum(l.bytes) OVER (ORDER BY l.seq, l.id ROWS UNBOUNDED PRECEDING) - l.bytes AS before,
           count(*) OVER () AS n
    FROM (
      SELECT c.seq, c.committed_at, o.id, o.kind, o.action, o.topic, o.election_id, o.committee_id, o.row_id,
             o.data, o.old, coalesce(o.bytes, 0) AS bytes
      FROM (SELECT k.seq, k.txid, k.committed_at FROM hub.commits k WHERE k.seq >= after_seq ORDER BY k.seq LIMIT 10000) c
      LEFT JOIN LATERAL (
        SELECT ob.id, ob.kind, ob.action, ob.topic, ob.election_id, ob.committee_id, ob.row_id, ob.data, ob.old,
               -- Bytes the hub will hold: the stored size of an uncompressed value (free to read),
               -- else its text's length (a compressed value's stored size says nothing).
               CASE WHEN pg_column_compression(ob.data) IS NULL THEN coalesce(pg_column_size(ob.data), 0)
                    ELSE octet_length(ob.data::text) END AS bytes
        FROM hub.outbox ob
        WHERE ob.txid = c.txid AND ob.id > CASE WHEN c.seq = after_seq THEN after_id ELSE 0 END
        ORDER BY ob.id LIMIT max_rows) o ON true
      ORDER BY c.seq, o.id LIMIT max_rows) l
  ), kept AS (
    SELECT p.*, w.ecol, w.ccol FROM page p LEFT JOIN tw w ON p.action = 'updated' AND w.kind = p.kind
    WHERE p.before < max_bytes
  )
  SELECT f::text, k.seq::text, k.id::text, k.kind, k.action, k.topic, k.election_id::text, k.committee_id::text,
         k.row_id::text, k.data::text, (extract(epoch FROM k.committed_at) * 1000)::float8, k.n::int,
         CASE WHEN k.kind = 'vote' THEN k.data ->> 'count' END,
         hub.to_bigint(k.old ->> k.ecol)::text, hub.to_bigint(k.old ->> k.ccol)::text,
         CASE WHEN k.kind = 'vote' AND k.ecol IS NOT NULL THEN k.old ->> 'count' END
  FROM kept k
  ORDER BY k.seq, k.id;
  IF NOT FOUND THEN
    RETURN QUERY SELECT f::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
      NULL::text, NULL::text, NULL::float8, 0, NULL::text, NULL::text, NULL::text, NULL::text;
  END IF;
END
$$;
