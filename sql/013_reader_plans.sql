-- The reader's calls plan once, and their plans stay index walks however the outbox grows.
--
-- 1. hub.sequence's generic plans (012) could be seq scans. A generic plan is built once per
--    connection, with the statistics of that moment, and kept until the tables are analyzed or
--    vacuumed again. A hub that starts on an empty outbox (a fresh database, the morning of the
--    election) plans its probes of hub.outbox while the planner believes it empty: a seq scan is
--    the cheapest plan for an empty table. Once writes begin, each of those probes reads the whole
--    outbox, once per transaction a call finds: after 20 000 transactions written before the
--    outbox was analyzed, one call keying 5 000 of them took 13-17 s instead of 59-72 ms, and
--    a page of 1 000 rows 12-16 s instead of 34-50 ms (bench/commit-order.ts --only plans).
--    Autovacuum usually analyzes the outbox within a minute or so; a bulk import, a busy
--    autovacuum or one turned off for the table leaves the hub with that plan.
--    (Custom plans, before 012, were planned at every call with the table's real size, and
--    paid for it on every call.)
--    Every statement of hub.sequence is meant to be an index probe. With enable_seqscan off for
--    the function, the planner takes the index whatever the statistics say. A seq scan stays only
--    where no index applies: the one-row hub.commit_state (and, in hub.next_page, the few rows of
--    hub.watched). Those carry the planner's penalty cost of 10^10, which would have PostgreSQL
--    compile the statements with JIT at every call (0.5 s a page, measured): jit is off for both
--    functions, which never gain from it.
--    test/plans.test.ts plans on an empty outbox, writes 3 000 transactions the planner does not
--    know about, and checks that the next calls' plans touch the outbox only through its index.
--
-- 2. hub.next_page planned its page afresh at every call. PL/pgSQL plans a statement that uses
--    the function's arguments (the page's RETURN QUERY: after_seq, after_id, max_rows,
--    max_bytes) with their values for its first five calls. After that it keeps a generic plan
--    only if that plan's estimated cost is close to theirs. For this query it never is: the
--    generic plan must assume that `seq >= after_seq` matches a third of hub.commits, while the
--    custom plans, knowing the reader stands at the head, expect a row or two. So every call
--    planned the whole query again: two tables, a lateral join, two window aggregates and the
--    watched tables' columns. The more keys the database holds, the costlier that planning is,
--    and an election night keeps hundreds of thousands of keys within the retention.
--    Every plan of this query is the same index walk whatever the values. It reads hub.commits
--    by its primary key from after_seq, in key order, under a constant LIMIT, and each key's
--    rows by the outbox primary key (txid, id). A generic plan is that walk too: EXPLAIN on
--    300 000 keys and rows shows it for a page at the head and for one of 1 000 keys far behind
--    it. Which plan a connection ran depended on the outbox when it began: on a nearly empty one
--    the custom plans cost what the generic one does, PL/pgSQL kept the generic one after five
--    calls, and that plan (made on an empty outbox) took a seq scan of the outbox for every key
--    (1. above, the same measurement). With enable_seqscan off as well, the walk does not depend
--    on when the plan was made.
--    From a writer's NOTIFY to the rows in hand on a database holding 100 000 keys:
--    docs/BENCHMARKS.md, "The reader's plans" (bench/commit-order.ts --only page).
--
-- Nothing else changes: the same functions, the same rows, the same order.

ALTER FUNCTION hub.sequence(boolean, integer) SET enable_seqscan = off;
ALTER FUNCTION hub.sequence(boolean, integer) SET jit = off;
ALTER FUNCTION hub.next_page(bigint, bigint, integer, bigint) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION hub.next_page(bigint, bigint, integer, bigint) SET enable_seqscan = off;
ALTER FUNCTION hub.next_page(bigint, bigint, integer, bigint) SET jit = off;
