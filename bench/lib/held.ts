/*
 * A write transaction held open while other rows are written and delivered (issue 14: "with a
 * write transaction held open 10 s in another database, rows written meanwhile arrive within
 * 1 s"). Shared by the bench's held-open scenario (bench/scenarios/held-open.ts: a hub process,
 * the client workers, the writer worker) and bench/commit-order.ts (a hub in its own process,
 * one ws client).
 */
import pg from 'pg';
import { ms, percentile } from './stats.ts';

/** Where the transaction is held. */
export type HeldWhere = 'another database' | 'this database';

export const HELD_LABEL: Record<HeldWhere, string> = {
  'another database': 'a write transaction in another database of the same cluster',
  'this database': 'a transaction in this database that wrote a watched table and has not committed',
};

/** The target: every row written while it is open arrives within this, before it ends. */
export const HELD_TARGET_MS = 1000;

export type Holder = { commit(): Promise<void> };

/**
 * Opens a transaction on `url` and writes in it, so that it has a transaction id (and holds the
 * cluster's xmin horizon back) until `commit`. In another database it inserts an `elections`
 * row there (no hub reads that database); in this one a `guarantees` row at `at`, which is
 * captured: its outbox row commits only with it.
 */
export async function holdOpen(
  where: HeldWhere,
  url: string,
  at: { election: number; committee: number },
): Promise<Holder> {
  const c = new pg.Client({ connectionString: url, application_name: 'bench-holder' });
  c.on('error', () => undefined);
  await c.connect();
  try {
    await c.query('BEGIN');
    if (where === 'another database') await c.query(`INSERT INTO elections (name) VALUES ('a long import elsewhere')`);
    else
      await c.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'held')`, [
        at.election,
        at.committee,
      ]);
  } catch (err) {
    await c.end().catch(() => undefined);
    throw err;
  }
  let ended: Promise<void> | undefined;
  return {
    commit: () =>
      (ended ??= (async () => {
        try {
          await c.query('COMMIT');
        } finally {
          await c.end().catch(() => undefined);
        }
      })()),
  };
}

export type HeldResult = {
  holdMs: number;
  /** Rows written while the transaction was open. */
  rows: number;
  /** Of those, how many arrived before it ended, and after. */
  deliveredWhileHeld: number;
  arrivedAfter: number;
  /** Latency of every row that arrived (while it was open or after), ms. */
  p50Ms: number | null;
  maxMs: number | null;
  /** Every row arrived while it was open, none later than HELD_TARGET_MS. */
  withinTarget: boolean;
};

/** Sums up the latencies (ms) of the rows that arrived while it was open and after it ended. */
export function heldResult(
  holdMs: number,
  rows: number,
  whileHeld: readonly number[],
  after: readonly number[] = [],
): HeldResult {
  const all = [...whileHeld, ...after].sort((a, b) => a - b);
  const maxMs = all.length > 0 ? (all[all.length - 1] as number) : null;
  return {
    holdMs,
    rows,
    deliveredWhileHeld: whileHeld.length,
    arrivedAfter: after.length,
    p50Ms: all.length > 0 ? percentile(all, 50) : null,
    maxMs,
    withinTarget: whileHeld.length >= rows && maxMs !== null && maxMs <= HELD_TARGET_MS,
  };
}

export function describeHeld(where: HeldWhere, r: HeldResult): string {
  const lat = r.p50Ms === null ? 'none arrived' : `p50 ${ms(r.p50Ms)} ms, max ${ms(r.maxMs ?? Number.NaN)} ms`;
  return (
    `held open ${r.holdMs / 1000} s in ${where}: ${r.deliveredWhileHeld}/${r.rows} rows delivered while it was open` +
    `${r.arrivedAfter > 0 ? `, ${r.arrivedAfter} after` : ''}; ${lat}`
  );
}
