-- Pages after the first are read without the sequencer's lock.
--
-- hub.next_page (011) gives keys and reads the page in one transaction, so the sequencer's lock
-- (hub.sequence's) is held until that transaction commits. PostgreSQL commits only after it has
-- sent every row of the result: a reader that does not read what it asked for (its process
-- frozen, in a long GC pause or stopped; its network gone) keeps the lock for as long as the
-- rows do not fit in the sockets' buffers, and every other call of every node waits for it
-- (lock_timeout, 5 s, then an error, again and again). Measured: a reader asked for a page of
-- 3 000 rows of 2 kB and stopped reading; its backend waited in ClientWrite holding the lock,
-- and another node's hub.sequence() failed after 5.00 s (test/commit-order.test.ts now shows
-- the reverse). A network that drops a reader's packets holds it until TCP gives up (minutes).
--
-- So a reader's pass (src/db/reader.ts) now takes its first page with hub.next_page under a
-- byte budget small enough for the sockets to take whole whatever the reader does (16 kB:
-- PostgreSQL's send buffer alone starts at 16 kB on Linux, the reader's receive buffer at
-- 128 kB; one row always comes, so a single row larger than that can still wait, as can a
-- page on a network that drops everything until TCP gives up), and every further page of the
-- pass with hub.read_page, which gives no keys and takes no lock: the keys it reads were given
-- by the pass's first call (or by any node since: keys have no holes, and the reader treats a
-- hole above its frontier as it always has). An idle or steady stream (a few rows per page)
-- reads as before, in one call; a burst reads its bulk without holding anyone up.
-- hub.read_page is hub.next_page's page (011) with 013's settings: the same rows, columns and
-- order, `frontier` NULL. It is a copy rather than something hub.next_page calls, so that the
-- reader's one call per event stays one PL/pgSQL function (a nested set-returning call would cost
-- every idle event a second function and a second tuplestore; not measured): a change to either page must be
-- made to both, and test/commit-order.test.ts compares their rows.

CREATE FUNCTION hub.read_page(after_seq bigint, after_id bigint, max_rows integer, max_bytes bigint)
RETURNS TABLE (
  frontier text, seq text, id text, kind text, action text, topic text, election_id text, committee_id text,
  row_id text, data text, committed_ms float8, fetched integer,
  vote_count text, old_election_id text, old_committee_id text, old_count text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
  f bigint; -- NULL: this page gives no keys and knows no frontier
BEGIN
  IF max_rows IS NULL OR max_rows < 1 OR max_rows > 10000 THEN
    RAISE EXCEPTION 'hub.read_page: max_rows must be 1 to 10000, got %', max_rows;
  END IF;
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
