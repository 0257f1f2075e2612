-- Order without the cluster-wide horizon: every transaction that writes the outbox takes a
-- key at commit, and the key is the order.
--
-- Until now rows were ordered by (txid, id) and read only below pg_snapshot_xmin, the oldest
-- transaction still in flight anywhere in the PostgreSQL cluster: one long import, report or
-- migration in any database froze every dashboard until it ended (measured: a write held open
-- 20 s in another database delivered 0 of 20 events meanwhile). Now:
--
-- * A transaction that writes no outbox row takes nothing and delays nothing: the hub no
--   longer looks at transaction ids or snapshots at all.
-- * The first statement of a transaction that inserts into hub.outbox (a capture trigger or
--   hub.publish) inserts one marker row (txid) into hub.commit_marks, ON CONFLICT DO NOTHING.
--   That queues a deferred constraint trigger, which fires at COMMIT (PostgreSQL runs pending
--   deferred triggers first thing in CommitTransaction, AfterTriggerFireDeferred, before the
--   commit record is written). It takes, in this order:
--     1. pg_advisory_xact_lock_shared(2^62 - 1): "I am taking a key" (shared: writers never
--        wait for each other on it),
--     2. k := nextval('hub.commit_seq') (CACHE 1: keys are handed out in call order),
--     3. pg_advisory_xact_lock(k): "key k is still committing",
--   and inserts (k, txid, commit time) into hub.commits. Transaction-level locks are held
--   until the transaction has ended, and PostgreSQL makes a commit visible before it releases
--   them: CommitTransaction calls RecordTransactionCommit, then ProcArrayEndTransaction ("Let
--   others know about no transaction in progress by me. Note that this must be done _before_
--   releasing locks we hold and _after_ RecordTransactionCommit."), and only then
--   ResourceOwnerRelease(RESOURCE_RELEASE_LOCKS) (src/backend/access/transam/xact.c; the same
--   order in AbortTransaction). So whoever sees lock k free knows that its transaction's
--   commit, if it committed, is visible to every snapshot taken afterwards.
-- * The global order is (key, outbox id): the same on every hub node, because it is in the
--   database. Rows written by a transaction after its key was taken (e.g. by an application's
--   deferred trigger firing after ours) share its key: the rows join their key through txid,
--   and all of them become visible at the commit.
--
-- Nothing serializes the commits themselves: a global exclusive lock held from the key to the
-- end of the transaction would make every capturing commit wait for the previous one's WAL
-- flush (what PostgreSQL does for NOTIFY, and what issue 14 item 1 removes). The price is that
-- keys are handed out in the order transactions start to commit but can become visible out of
-- it: key 6 may be visible while key 5 is still committing, or 5 may never come (its transaction
-- aborted after taking it). The reader (src/db/reader.ts) therefore reads in key order up to
-- the first missing key (a "hole") and resolves a hole that does not fill within a few
-- milliseconds with hub.commit_frontier() below:
--
--   hub.commit_frontier() returns F such that every key below F has been settled: its
--   transaction has ended, so it is either visible to any snapshot taken after the call, or
--   will never be. It reads (a) the sequence's last value A (every key <= A has been handed
--   out), then (b) pg_locks: the keys still locked, and whether some transaction holds the
--   "taking a key" lock without holding a key lock yet (it is between steps 1 and 3: its key
--   is unknown; the function looks again, that window is a few microseconds). With no such
--   transaction, F = min(locked keys, A + 1): a transaction with a key <= A that is still in
--   flight holds lock 1 (taken before its nextval), so it holds its key lock, so its key is
--   >= F. Advisory locks are never "fast-path" locks (src/backend/storage/lmgr/lock.c,
--   EligibleForRelationFastPath: LOCKTAG_RELATION only), and pg_locks reads the shared lock
--   table holding all its partition locks at once (GetLockStatusData): one consistent view.
--   A hole below F, seen by a statement that started after the call returned, is an aborted
--   transaction's key (or one skipped after a crash: a sequence may jump ahead up to 32 values
--   then), and is skipped. The order matters: F first, then the read, in separate statements.
--
-- Consequences, each argued from the above:
-- * Cursors never skip: a key is skipped only when its transaction has ended without it
--   becoming visible, i.e. it aborted; a key still committing holds the readers back, and only
--   readers: later committers do not wait for it.
-- * Delay: a transaction delays only what is ordered after it (larger keys), and only while it
--   commits (from its key to its end, normally well under a millisecond plus the WAL flush).
--   Exceptions, by the application's own choice: SET CONSTRAINTS ALL IMMEDIATE (or naming
--   hub.hub_commit_key) takes the key at that statement, so the transaction holds back the
--   keys after it until it ends; a prepared transaction (PREPARE TRANSACTION) keeps its key
--   lock until COMMIT/ROLLBACK PREPARED, and holds back delivery (never writers) until then
--   (PostgreSQL carries transaction-level advisory locks over to the prepared transaction; not
--   tested here: the test server has max_prepared_transactions = 0, and a transaction that sent
--   a NOTIFY cannot be prepared at all).
-- * Snapshot + since = the database (src/db/snapshot.ts): the snapshot calls
--   hub.commit_frontier() = F before its REPEATABLE READ snapshot is taken, so every key below F
--   that committed is in the snapshot; its cursor is (F, 0), and the few transactions with
--   keys >= F already visible in it (they committed between the two) are subtracted again
--   using their outbox rows, so their events, which come after the cursor, are counted once.
-- * Pruning (src/db/outbox.ts) deletes only keys below F, in key order, and records how far it
--   reached in hub.outbox_state (pruned_seq, pruned_id): a `since` below it answers resync.
-- * A committed transaction whose trigger did not fire would have no key and never be
--   delivered: the triggers are ENABLE ALWAYS, so session_replication_role = replica does not
--   skip them (disabling them by hand does).
--
-- Keys start at 2^62, above any transaction id PostgreSQL can reach (an xid8 of 2^62 would need
-- 2^30 wraparounds), so a cursor tells which scheme issued it. Rows already in the outbox keep
-- their old order: their key is their txid (a transaction's rows stayed together under one
-- txid, in id order), so a cursor issued before this migration, (txid, id), names the same
-- position in the new order and resumes exactly. Every row written after the migration has a
-- key of 2^62 or more: after every old row, as the old order had it (the migration locks the
-- outbox, so no transaction that wrote it is still open). hub.outbox_state.legacy_limit is the
-- first transaction id not yet assigned at the migration: a cursor below 2^62 and above it can
-- only come from a hub of the previous version still running after the migration (it orders by
-- txid), and is answered with resync (the client takes a fresh snapshot) rather than misread.
-- Such hubs keep delivering live after this migration, but can no longer prune or replay from
-- PostgreSQL (pruned_txid is gone): restart them after migrating.
--
-- Cost per transaction that writes the outbox: one marker row (unlogged: no WAL; the hub's prune
-- deletes it with its key), one hub.commits row, two advisory locks, one nextval; nothing per
-- outbox row. Measured (bench/commit-order.ts, backend CPU of a one-row transaction with a
-- capture that sends no NOTIFY): +10.6 µs (41.5 instead of 30.9); a logged marker row updated
-- with the key, instead of this second table, cost +16.4 µs.
--
-- Privileges: the application's roles need INSERT on hub.commit_marks and hub.commits and USAGE
-- on hub.commit_seq (as they need INSERT on hub.outbox); the hub's role SELECT and DELETE.

-- No transaction that wrote the outbox is still open past this point, and none starts until
-- this migration commits (writers need ROW EXCLUSIVE; the hubs' reads go on).
LOCK TABLE hub.outbox IN EXCLUSIVE MODE;

-- CACHE 1: with a cache, each session hands out its own block of values, so keys would not
-- follow the order of the nextval calls. NO CYCLE, and 2^62 values before the bigint ends: at a
-- million commits per second, 146 000 years. A sequence is not transactional: an aborted
-- transaction's key stays a hole, and after a crash it may jump ahead (holes nobody holds).
CREATE SEQUENCE hub.commit_seq AS bigint
  MINVALUE 4611686018427387904 START 4611686018427387904 CACHE 1 NO CYCLE;

-- One row per committed transaction that wrote the outbox: its key, written at its COMMIT.
CREATE TABLE hub.commits (
  seq bigint PRIMARY KEY,
  txid xid8 NOT NULL,
  committed_at timestamptz NOT NULL
);

-- One row per transaction that wrote the outbox, only to queue its commit trigger once: it
-- matters only until that transaction ends (so unlogged: a crash, which ends them all, may
-- empty it). Deleted by the prune with the key.
CREATE UNLOGGED TABLE hub.commit_marks (txid xid8 PRIMARY KEY);

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM hub.outbox WHERE txid >= '4611686018427387904'::xid8) THEN
    RAISE EXCEPTION 'hub.outbox holds transaction ids of 2^62 or more: they would collide with commit keys';
  END IF;
END
$$;

-- The rows already there keep their order: key = txid (before the triggers exist, so these
-- inserts take no new key).
INSERT INTO hub.commits (seq, txid, committed_at)
SELECT txid::text::bigint, txid, max(committed_at) FROM hub.outbox GROUP BY txid;

ALTER TABLE hub.outbox_state RENAME COLUMN pruned_txid TO pruned_seq;
ALTER TABLE hub.outbox_state ALTER COLUMN pruned_seq DROP DEFAULT;
ALTER TABLE hub.outbox_state ALTER COLUMN pruned_seq TYPE bigint USING pruned_seq::text::bigint;
ALTER TABLE hub.outbox_state ALTER COLUMN pruned_seq SET DEFAULT 0;
ALTER TABLE hub.outbox_state ADD COLUMN legacy_limit bigint NOT NULL DEFAULT 0;
UPDATE hub.outbox_state SET legacy_limit = pg_snapshot_xmax(pg_current_snapshot())::text::bigint;

/** Statement level: once per transaction (and per statement a cheap no-op), whatever wrote the outbox. */
CREATE FUNCTION hub.mark_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO hub.commit_marks (txid) VALUES (pg_current_xact_id()) ON CONFLICT (txid) DO NOTHING;
  RETURN NULL;
END
$$;

/** At COMMIT (deferred): the transaction's key, in the order argued above. */
CREATE FUNCTION hub.take_commit_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  k bigint;
BEGIN
  -- Only this transaction's own marker (one inserted by hand for another takes nothing).
  IF NEW.txid <> pg_current_xact_id() THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock_shared(4611686018427387903);
  k := nextval('hub.commit_seq');
  PERFORM pg_advisory_xact_lock(k);
  INSERT INTO hub.commits (seq, txid, committed_at) VALUES (k, NEW.txid, clock_timestamp());
  RETURN NULL;
END
$$;

CREATE TRIGGER hub_commit_mark AFTER INSERT ON hub.outbox
  FOR EACH STATEMENT EXECUTE FUNCTION hub.mark_commit();
ALTER TABLE hub.outbox ENABLE ALWAYS TRIGGER hub_commit_mark;
CREATE CONSTRAINT TRIGGER hub_commit_key AFTER INSERT ON hub.commit_marks
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hub.take_commit_key();
ALTER TABLE hub.commit_marks ENABLE ALWAYS TRIGGER hub_commit_key;

/**
 * Every key below the result is settled: its transaction has ended (visible to any statement
 * that starts after this call returns, or never). See the argument at the top of this file.
 */
CREATE FUNCTION hub.commit_frontier() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  assigned bigint;
  held bigint;
  taking boolean;
BEGIN
  FOR attempt IN 1..2000 LOOP
    -- (a) every key up to `assigned` has been handed out...
    assigned := coalesce(pg_sequence_last_value('hub.commit_seq'), 4611686018427387903);
    -- (b) ...and each one still in flight is locked now, unless its transaction is between
    -- taking the shared lock and locking its key.
    WITH l AS (
      SELECT virtualtransaction AS vx, (classid::bigint << 32) | objid::bigint AS key
      FROM pg_locks
      WHERE locktype = 'advisory' AND objsubid = 1 AND granted
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND classid BETWEEN 1073741823 AND 2147483647
    )
    SELECT (SELECT min(key) FROM l WHERE key > 4611686018427387903),
           EXISTS (SELECT 1 FROM l s WHERE s.key = 4611686018427387903
                   AND NOT EXISTS (SELECT 1 FROM l k WHERE k.vx = s.vx AND k.key > 4611686018427387903))
      INTO held, taking;
    IF NOT taking THEN
      RETURN least(coalesce(held, assigned + 1), assigned + 1);
    END IF;
    IF attempt > 20 THEN
      PERFORM pg_sleep(0.0005);
    END IF;
  END LOOP;
  RAISE EXCEPTION 'hub.commit_frontier: a transaction stayed between taking its commit key and locking it';
END
$$;

/** The outbox in the one global order (for operators and tests; the hub's own queries join the same way). */
CREATE VIEW hub.outbox_in_order AS
  SELECT c.seq, o.id, o.txid, o.kind, o.action, o.topic, o.election_id, o.committee_id, o.row_id, o.data, o.old,
         c.committed_at, o.committed_at AS captured_at
  FROM hub.commits c JOIN hub.outbox o ON o.txid = c.txid;
