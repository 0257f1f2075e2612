import type pg from 'pg';
import { escapeIdentifier } from 'pg';
import type { DashboardSnapshot } from '../events/schema.ts';
import { encodeCursor } from './cursor.ts';

type Counts = { guarantees: number; attendance: number; votes: number };
type Field = keyof Counts;

const FIELD: Record<string, Field> = { guarantee: 'guarantees', attendance: 'attendance', vote: 'votes' };
const contribution = (kind: string, row: Record<string, unknown>): number =>
  kind === 'vote' ? Number(row.count ?? 0) || 0 : 1;

type Watched = { kind: string; tbl: string; election_column: string; committee_column: string };

/**
 * Computes an election's dashboard with a cursor consistent with its numbers:
 * snapshot + every event after the cursor = the database.
 *
 * The snapshot is read in one REPEATABLE READ transaction whose horizon x
 * (pg_snapshot_xmin) becomes the cursor (x, 0). Transactions at or above x that had already
 * committed are visible in the snapshot but their events come *after* the cursor; their
 * effect is subtracted again using the outbox rows (which keep the old row of updates), so
 * a client applying events after the cursor counts each change exactly once.
 */
export async function computeSnapshot(db: pg.Pool, electionId: number): Promise<DashboardSnapshot | null> {
  const client = await db.connect();
  // A checked-out client has no pool error listener: a backend killed between two queries
  // would otherwise be an unhandled 'error' event. The failing query reports it.
  const onError = () => undefined;
  client.on('error', onError);
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const head = await client.query<{ x: string; known: boolean }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x,
              EXISTS (SELECT 1 FROM elections WHERE id = $1) AS known`,
      [electionId],
    );
    const x = head.rows[0]?.x ?? '0';
    if (!head.rows[0]?.known) {
      await client.query('COMMIT');
      return null;
    }
    const committees = new Map<number, Counts>();
    const at = (c: number) => {
      let v = committees.get(c);
      if (!v) committees.set(c, (v = { guarantees: 0, attendance: 0, votes: 0 }));
      return v;
    };
    for (const r of (await client.query<{ id: number }>('SELECT id FROM committees WHERE election_id = $1', [electionId])).rows) at(r.id);

    const watched = (
      await client.query<Watched>(
        `SELECT kind, tbl::text AS tbl, election_column, committee_column FROM hub.watched WHERE kind IN ('guarantee', 'attendance', 'vote')`,
      )
    ).rows;
    const byKind = new Map(watched.map((w) => [w.kind, w]));
    for (const w of watched) {
      const field = FIELD[w.kind];
      if (!field) continue;
      const measure = w.kind === 'vote' ? 'coalesce(sum(count), 0)' : 'count(*)';
      const res = await client.query<{ c: number | null; n: string }>(
        `SELECT ${escapeIdentifier(w.committee_column)} AS c, (${measure})::text AS n FROM ${w.tbl}
         WHERE ${escapeIdentifier(w.election_column)} = $1 GROUP BY 1`,
        [electionId],
      );
      for (const r of res.rows) if (r.c !== null) at(r.c)[field] += Number(r.n);
    }

    // Undo what committed at or above the horizon: those events follow the cursor. Only this
    // election's rows (an update may have moved a row out of it: those are checked below), so a
    // wide statement above the horizon does not cost every computation all of its rows.
    const late = await client.query<{ kind: string; action: string; data: Record<string, unknown> | null; old: Record<string, unknown> | null }>(
      `SELECT kind, action, data, old FROM hub.outbox
       WHERE txid >= $1::text::xid8 AND kind IN ('guarantee', 'attendance', 'vote')
         AND (election_id = $2 OR action = 'updated') ORDER BY txid, id`,
      [x, electionId],
    );
    for (const e of late.rows) {
      const w = byKind.get(e.kind);
      const field = FIELD[e.kind];
      if (!w || !field) continue;
      const apply = (row: Record<string, unknown> | null, sign: number) => {
        if (!row || Number(row[w.election_column]) !== electionId) return;
        const c = Number(row[w.committee_column]);
        if (Number.isFinite(c)) at(c)[field] += sign * contribution(e.kind, row);
      };
      if (e.action === 'created') apply(e.data, -1);
      else if (e.action === 'deleted') apply(e.data, +1);
      else if (e.action === 'updated') {
        apply(e.data, -1);
        apply(e.old, +1);
      }
    }
    await client.query('COMMIT');

    const list = [...committees.entries()].sort((a, b) => a[0] - b[0]).map(([committee_id, v]) => ({ committee_id, ...v }));
    const totals = list.reduce(
      (t, c) => ({ guarantees: t.guarantees + c.guarantees, attendance: t.attendance + c.attendance, votes: t.votes + c.votes }),
      { guarantees: 0, attendance: 0, votes: 0 },
    );
    return { election_id: electionId, cursor: encodeCursor({ txid: BigInt(x), id: 0n }), totals, committees: list };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.off('error', onError);
    client.release();
  }
}
