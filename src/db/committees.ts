import type pg from 'pg';
import type { Logger } from '../log.ts';
import type { Id } from '../events/topics.ts';

export type CommitteeDirectory = {
  /**
   * The election of each committee (null: no such committee), as the `committees` table said
   * at most `ttlMs` ago. Ids not cached are looked up together with every other subscriber's
   * in one query per tick (at most 1 000 ids each). Rejects when the database fails.
   */
  electionsOf(committeeIds: readonly Id[]): Promise<ReadonlyMap<Id, Id | null>>;
  /** A cached answer younger than `ttlMs`, without a query; undefined if there is none. */
  cached(committeeId: Id): Id | null | undefined;
  stats(): { entries: number; max_entries: number; ttl_ms: number; lookups: number };
};

export type DirectoryOptions = {
  /** Known and absent committees remembered, together (least recently used evicted first). */
  maxEntries?: number;
  /** How stale an answer may be: a committee moved to another election is admitted by the old one at most this long. */
  ttlMs?: number;
};

export const DIRECTORY_MAX_ENTRIES = 10_000;
export const DIRECTORY_TTL_MS = 5000;
const IDS_PER_QUERY = 1000;

type Entry = { election: Id | null; at: number };

/**
 * Committee → election, read from the reference `committees` table, for admission only
 * (`committee:C` through an `elections` claim): delivery follows each row's own election.
 * Bounded: an LRU of `maxEntries` known and absent committees, each trusted for `ttlMs`.
 * A deployment without a `committees` table has no committee reachable through an election.
 */
export function createCommitteeDirectory(
  db: Pick<pg.Pool, 'query'>,
  log: Logger,
  opts: DirectoryOptions = {},
): CommitteeDirectory {
  const maxEntries = opts.maxEntries ?? DIRECTORY_MAX_ENTRIES;
  const ttlMs = opts.ttlMs ?? DIRECTORY_TTL_MS;
  // Map iteration order is insertion order: re-inserting on use makes the first key the least recently used.
  const entries = new Map<Id, Entry>();
  let lookups = 0;
  let warnedNoTable = false;
  let batch: { ids: Set<Id>; result: Promise<Map<Id, Id | null>> } | undefined;

  const fresh = (id: Id, now: number): Entry | undefined => {
    const e = entries.get(id);
    if (!e) return undefined;
    if (now - e.at > ttlMs) {
      entries.delete(id);
      return undefined;
    }
    return e;
  };
  const remember = (id: Id, election: Id | null, now: number) => {
    entries.delete(id);
    entries.set(id, { election, at: now });
    while (entries.size > maxEntries) {
      const oldest = entries.keys().next().value;
      if (oldest === undefined) break;
      entries.delete(oldest);
    }
  };

  const query = async (ids: Id[]): Promise<Map<Id, Id | null>> => {
    const found = new Map<Id, Id | null>();
    for (let i = 0; i < ids.length; i += IDS_PER_QUERY) {
      const chunk = ids.slice(i, i + IDS_PER_QUERY);
      lookups++;
      try {
        const res = await db.query<{ id: string; election_id: string }>(
          'SELECT id::text AS id, election_id::text AS election_id FROM committees WHERE id = ANY($1::bigint[])',
          [chunk],
        );
        for (const r of res.rows) found.set(r.id, r.election_id);
      } catch (err) {
        // No committees table: nothing is reachable through an election (remembered as absent).
        if ((err as { code?: string }).code !== '42P01') throw err;
        if (!warnedNoTable) log.warn('no committees table: committee topics are only open to direct committee claims');
        warnedNoTable = true;
      }
      const now = Date.now();
      for (const id of chunk) {
        const election = found.get(id) ?? null;
        found.set(id, election);
        remember(id, election, now);
      }
    }
    return found;
  };

  /** Joins the lookup of this tick: one query for every subscriber's missing ids. */
  const lookUp = (ids: Id[]): Promise<Map<Id, Id | null>> => {
    if (!batch) {
      const b: { ids: Set<Id>; result: Promise<Map<Id, Id | null>> } = {
        ids: new Set(),
        result: Promise.resolve(new Map()),
      };
      b.result = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
        if (batch === b) batch = undefined;
        return query([...b.ids]);
      });
      batch = b;
    }
    for (const id of ids) batch.ids.add(id);
    return batch.result;
  };

  return {
    async electionsOf(ids) {
      const now = Date.now();
      const answer = new Map<Id, Id | null>();
      const missing: Id[] = [];
      for (const id of new Set(ids)) {
        const e = fresh(id, now);
        if (e) {
          remember(id, e.election, e.at); // most recently used
          answer.set(id, e.election);
        } else missing.push(id);
      }
      if (missing.length > 0) {
        // Read from the batch's own result: the LRU may already have evicted some of them.
        const found = await lookUp(missing);
        for (const id of missing) answer.set(id, found.get(id) ?? null);
      }
      return answer;
    },
    cached: (id) => fresh(id, Date.now())?.election,
    stats: () => ({ entries: entries.size, max_entries: maxEntries, ttl_ms: ttlMs, lookups }),
  };
}
