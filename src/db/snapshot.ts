import type pg from 'pg';
import { escapeIdentifier } from 'pg';
import type { DashboardSnapshot } from '../events/schema.ts';
import { type Id, compareIds, idValue } from '../events/topics.ts';
import { encodeCursor } from '../events/position.ts';
import { commitFrontier, sequenceCommits } from './outbox.ts';

type Counts = { guarantees: number; attendance: number; votes: number };
type Field = keyof Counts;

const FIELD: Record<string, Field> = { guarantee: 'guarantees', attendance: 'attendance', vote: 'votes' };
const contribution = (kind: string, row: Record<string, unknown>): number =>
  kind === 'vote' ? Number(row.count ?? 0) || 0 : 1;

type Watched = { kind: string; tbl: string; election_column: string; committee_column: string };

/**
 * A computed snapshot and the fingerprint of `hub.watched` it was counted under (read in the
 * same transaction). Cached and shared across nodes with it: a node takes a cached snapshot
 * only under the watch set it knows (src/cache/dashboard.ts), never one counted under an older
 * or newer set. Not part of GET /dashboard/{id}'s body.
 */
export type ComputedSnapshot = DashboardSnapshot & { watched: string };

/** How long a snapshot waits for a late TRUNCATE to get a commit key below the frontier before it fails. */
export const LATE_TRUNCATE_WAIT_MS = 2000;

export type SnapshotOptions = {
  /** The bound of the wait for a late TRUNCATE (below); default LATE_TRUNCATE_WAIT_MS. */
  lateTruncateWaitMs?: number;
};

/**
 * Computes an election's dashboard with a cursor consistent with its numbers:
 * snapshot + every event after the cursor = the database.
 *
 * First the commit frontier F (sql/009_sequencer.sql): every commit key below F has committed
 * when the call returns, and no key below F will be added. The snapshot is then read in one
 * REPEATABLE READ transaction, taken after that, so it holds every key below F, and its cursor
 * is (F, 0). What else it sees has committed since, and gets (or got, meanwhile) a key at or
 * above F: transactions with keys >= F, and transactions no hub.sequence call has given a key
 * yet (by the sequencer's state as the snapshot sees it: their ids are in its `in_flight` or at
 * or above its `horizon`). Their events come *after* the cursor, so their effect is subtracted
 * again using the outbox rows (which keep the old row of updates): a client applying events
 * after the cursor counts each change exactly once. (That set is small: a hub.sequence call
 * comes first, so it is what committed while this started.)
 *
 * Except a TRUNCATE among them (a watched table of a counted kind): it leaves no rows to
 * subtract, the table as the snapshot sees it is already emptied, and what it held at (F, 0)
 * cannot be read back from it. Then the attempt is dropped and, once the TRUNCATE has a key
 * below the frontier (this computation calls hub.sequence itself, without waiting for the
 * sequencer's lock), made again: its new frontier is past the TRUNCATE, which is then no longer
 * late. Only a sequencer call holding the lock can hold that up, normally for a millisecond;
 * the wait is bounded by `lateTruncateWaitMs`, after which the computation fails (the callers
 * answer 503 or retry later: src/cache/). A sequencer that holds its lock that long holds back
 * the readers as well, so nothing newer could be served meanwhile anyway. Why not cut
 * elsewhere: a cursor after the TRUNCATE would claim keys that are not given yet; a cursor
 * before it needs the table as it was. Every election's computation meets the same late
 * TRUNCATE (its outbox row names none) and waits for the same key, so waiting holds back no
 * unaffected one; the connection is returned to the pool while it waits.
 */
export async function computeSnapshot(
  db: pg.Pool,
  electionId: Id,
  opts: SnapshotOptions = {},
): Promise<ComputedSnapshot | null> {
  const waitMs = opts.lateTruncateWaitMs ?? LATE_TRUNCATE_WAIT_MS;
  const deadline = Date.now() + waitMs;
  let pause = 1;
  // Keys for what has committed so far (unless a call is under way): less to subtract.
  await sequenceCommits(db, false);
  for (;;) {
    const r = await computeOnce(db, electionId);
    if (!r.lateTruncate) return r.snapshot;
    const truncate = r.lateTruncate;
    // Past it once the TRUNCATE's transaction has a key (a visible key is below the frontier).
    for (;;) {
      await sequenceCommits(db, false);
      const res = await db.query('SELECT 1 FROM hub.commits WHERE txid = $1::text::xid8', [truncate.txid]);
      if (res.rows.length > 0) break;
      if (Date.now() >= deadline)
        throw new Error(
          `dashboard snapshot of election ${electionId}: a TRUNCATE of ${truncate.table} (transaction ${truncate.txid}) ` +
            `is visible but has no commit key below the frontier after ${waitMs} ms; its state before the TRUNCATE cannot be counted`,
        );
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 20);
    }
  }
}

type Attempt =
  { snapshot: ComputedSnapshot | null; lateTruncate?: undefined } | { lateTruncate: { txid: string; table: string } };

async function computeOnce(db: pg.Pool, electionId: Id): Promise<Attempt> {
  const client = await db.connect();
  // A checked-out client has no pool error listener: a backend killed between two queries
  // would otherwise be an unhandled 'error' event. The failing query reports it.
  const onError = () => undefined;
  client.on('error', onError);
  try {
    // Before BEGIN: the snapshot is taken by the transaction's first query, and must come after.
    const frontier = await commitFrontier(client);
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const head = await client.query<{ known: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM elections WHERE id = $1) AS known`,
      [electionId],
    );
    if (!head.rows[0]?.known) {
      await client.query('COMMIT');
      return { snapshot: null };
    }
    // Ids as canonical text (exact beyond 2^53); written as JSON numbers or strings at the end.
    const committees = new Map<Id, Counts>();
    const at = (c: Id) => {
      let v = committees.get(c);
      if (!v) committees.set(c, (v = { guarantees: 0, attendance: 0, votes: 0 }));
      return v;
    };
    for (const r of (
      await client.query<{ id: string }>('SELECT id::text AS id FROM committees WHERE election_id = $1', [electionId])
    ).rows)
      at(r.id);

    const watched = (
      await client.query<Watched>(
        `SELECT kind, tbl::text AS tbl, election_column, committee_column FROM hub.watched WHERE kind IN ('guarantee', 'attendance', 'vote')`,
      )
    ).rows;
    const byKind = new Map(watched.map((w) => [w.kind, w]));
    const watchedPrint = await watchedFingerprint(client);
    for (const w of watched) {
      const field = FIELD[w.kind];
      if (!field) continue;
      const measure = w.kind === 'vote' ? 'coalesce(sum(count), 0)' : 'count(*)';
      const res = await client.query<{ c: string | null; n: string }>(
        // Committee ids as canonical text, converted per group (not per row); groups that
        // spell one id differently (a text column) add up in `at`.
        `SELECT hub.to_bigint(g.c::text)::text AS c, g.n FROM (
           SELECT ${escapeIdentifier(w.committee_column)} AS c, (${measure})::text AS n FROM ${w.tbl}
           WHERE ${escapeIdentifier(w.election_column)} = $1 GROUP BY 1) g`,
        [electionId],
      );
      for (const r of res.rows) if (r.c !== null) at(r.c)[field] += Number(r.n);
    }

    // Undo what committed with a key at or above the frontier, or with no key yet: those events
    // follow the cursor.
    // Only this election's rows (updates are all read: one may have moved a row out of it), so
    // a wide statement above the frontier does not cost every computation all of its rows.
    // The rows' ids are read as text in SQL (a parsed JSON number beyond 2^53 is not exact).
    // TRUNCATEs (no election) are read too: one among them makes this attempt void (above).
    // The sequencer's state as this snapshot sees it (passed as values: planned with them).
    const state = (
      await client.query<{ horizon: string; in_flight: string[] }>(
        'SELECT horizon::text AS horizon, in_flight::text[] AS in_flight FROM hub.commit_state',
      )
    ).rows[0];
    if (!state) throw new Error('hub.commit_state is empty (sql/009_sequencer.sql)');
    const late = await client.query<{
      txid: string;
      kind: string;
      action: string;
      data: Record<string, unknown> | null;
      old: Record<string, unknown> | null;
      de: string | null;
      dc: string | null;
      oe: string | null;
      oc: string | null;
    }>(
      `WITH late AS (
         SELECT k.seq, o.* FROM hub.commits k JOIN hub.outbox o ON o.txid = k.txid WHERE k.seq >= $1::bigint
         UNION ALL -- no key yet (in_flight ids are below the horizon: the two are apart)
         SELECT NULL::bigint, o.* FROM hub.outbox o WHERE o.txid >= $3::text::xid8
         UNION ALL
         SELECT NULL::bigint, o.* FROM hub.outbox o WHERE o.txid = ANY ($4::text[]::xid8[])
       )
       SELECT o.txid::text AS txid, o.kind, o.action, o.data, o.old,
              hub.to_bigint(o.data ->> w.election_column)::text AS de, hub.to_bigint(o.data ->> w.committee_column)::text AS dc,
              hub.to_bigint(o.old ->> w.election_column)::text AS oe, hub.to_bigint(o.old ->> w.committee_column)::text AS oc
       FROM late o
       LEFT JOIN LATERAL (SELECT election_column::text, committee_column::text FROM hub.watched
                          WHERE kind = o.kind ORDER BY tbl::text LIMIT 1) w ON true
       WHERE o.kind IN ('guarantee', 'attendance', 'vote')
         AND (o.election_id = $2::text::bigint OR o.action IN ('updated', 'truncated')) ORDER BY o.seq NULLS LAST, o.txid, o.id`,
      [frontier.toString(), electionId, state.horizon, state.in_flight],
    );
    const truncates = late.rows.filter((e) => e.action === 'truncated');
    const last = truncates[truncates.length - 1];
    if (last) {
      await client.query('COMMIT');
      return { lateTruncate: { txid: last.txid, table: String(last.data?.table ?? '?') } };
    }
    for (const e of late.rows) {
      const w = byKind.get(e.kind);
      const field = FIELD[e.kind];
      if (!w || !field) continue;
      const apply = (
        row: Record<string, unknown> | null,
        election: string | null,
        committee: string | null,
        sign: number,
      ) => {
        if (!row || election !== electionId || committee === null) return;
        at(committee)[field] += sign * contribution(e.kind, row);
      };
      if (e.action === 'created') apply(e.data, e.de, e.dc, -1);
      else if (e.action === 'deleted') apply(e.data, e.de, e.dc, +1);
      else if (e.action === 'updated') {
        apply(e.data, e.de, e.dc, -1);
        apply(e.old, e.oe, e.oc, +1);
      }
    }
    await client.query('COMMIT');

    const list = [...committees.entries()]
      .sort((a, b) => compareIds(a[0], b[0]))
      .map(([c, v]) => ({ committee_id: idValue(c), ...v }));
    const totals = list.reduce(
      (t, c) => ({
        guarantees: t.guarantees + c.guarantees,
        attendance: t.attendance + c.attendance,
        votes: t.votes + c.votes,
      }),
      { guarantees: 0, attendance: 0, votes: 0 },
    );
    return {
      snapshot: {
        election_id: idValue(electionId),
        cursor: encodeCursor({ seq: frontier, id: 0n }),
        totals,
        committees: list,
        watched: watchedPrint,
      },
    };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.off('error', onError);
    client.release();
  }
}

/**
 * A fingerprint of `hub.watched` (every column of every row): when it changes, what the totals
 * count changed, and every maintained dashboard is recomputed.
 */
export async function watchedFingerprint(db: Pick<pg.Pool, 'query'>): Promise<string> {
  const r = await db.query<{ f: string }>(
    `SELECT coalesce(md5(string_agg(w::text, ',' ORDER BY w.tbl::text)), '') AS f FROM hub.watched w`,
  );
  return r.rows[0]?.f ?? '';
}
