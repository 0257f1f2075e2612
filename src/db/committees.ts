import type pg from 'pg';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';

export type CommitteeDirectory = {
  /** The election a committee belongs to, if known to this node. */
  electionOf(committeeId: number): number | undefined;
  /** Loads the committees not known yet (authorization and topic covers need them). */
  ensure(committeeIds: Iterable<number>): Promise<void>;
};

/** Committee → election, read from the reference `committees` table on demand. */
export function createCommitteeDirectory(db: pg.Pool, log: Logger): CommitteeDirectory {
  const known = new Map<number, number>();
  const absent = new Map<number, number>(); // committee -> time it was looked up and not found
  return {
    electionOf: (id) => known.get(id),
    async ensure(ids) {
      const now = Date.now();
      const missing = [...new Set(ids)].filter((id) => !known.has(id) && now - (absent.get(id) ?? 0) > 1000);
      if (missing.length === 0) return;
      try {
        const res = await db.query<{ id: number; election_id: number }>(
          'SELECT id, election_id FROM committees WHERE id = ANY($1::bigint[])',
          [missing],
        );
        for (const r of res.rows) known.set(r.id, r.election_id);
        for (const id of missing) if (!known.has(id)) absent.set(id, now);
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'committee lookup failed');
      }
    },
  };
}
