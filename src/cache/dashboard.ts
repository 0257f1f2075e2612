/*
 * cache/: dashboard snapshots (GET /dashboard/{id}) and the `dashboard_update` frames.
 *
 * Lifecycle: the cache and the notifier are made by `startHub`; the notifier is stopped before
 * the reader (an update waiting for the reader gives up). Invariants: a snapshot is never
 * older than a change this node has seen (freshness by cursor, not by deleting keys); an update
 * goes out only after every event up to its cursor was delivered; work is bounded per
 * statement (only watched elections are recomputed, on their own pool, a fixed number at once);
 * per-election state is bounded. Redis trouble degrades to computing from PostgreSQL.
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { DashboardSnapshot } from '../events/schema.ts';
import type { Id } from '../events/topics.ts';
import { errorMessage } from '../errors.ts';
import { randomBytes } from 'node:crypto';
import { type Position, ZERO, compare, decodeCursor } from '../events/position.ts';

export type DashboardCache = {
  /** A request's snapshot as JSON (serialized once), or null for an unknown election; computed ahead of updates. */
  get(electionId: Id): Promise<string | null>;
  /**
   * A snapshot at least as new as every change seen so far and as `o.min` (computed once across
   * nodes: another node's result is taken when it is new enough), counted as `o.reason`.
   */
  refresh(electionId: Id, o?: RefreshOptions): Promise<string | null>;
  /**
   * Elections changed up to `seen`: older cached snapshots are stale; the app's keys are deleted.
   * Cheap for any number of elections: O(n) in memory, Redis deletions in bounded chunks.
   */
  invalidate(electionIds: Iterable<Id>, seen: Position): void;
  /** Every snapshot older than `p` is stale, whatever the election (keys lost in a restart of PostgreSQL). */
  invalidateAll(p: Position): void;
  /** True while Redis is configured but unreachable (the cache is bypassed). */
  degraded(): boolean;
};

export type RefreshOptions = {
  /** The label of hub_dashboard_computations_total if it computes (default: first_use or change). */
  reason?: 'first_use' | 'change' | 'resync' | 'verify';
  /** The snapshot's cursor must be at or after this. */
  min?: Position;
  /** Somebody waits for the answer: ahead of background computations. */
  urgent?: boolean;
  /**
   * Computed by this call, never taken from the cache, a computation in flight or another node:
   * the caller looks for a change the stream does not carry (a write that bypassed the triggers,
   * a change of hub.watched). Such a change moves no cursor, so a snapshot computed before it
   * can have the very cursor `min` asks for. The result is stored (it is the newest).
   */
  fresh?: boolean;
  /**
   * The fingerprint of `hub.watched` the caller counts under: a cached, shared or in-flight
   * snapshot is taken only if it was counted under the same set (a snapshot counted before an
   * operator watched or unwatched a table has a cursor as good as any, and the wrong numbers).
   * Undefined: any.
   */
  watched?: string;
};

export type DashboardCacheOptions = {
  /** `watched`: the fingerprint of hub.watched the numbers were counted under (stored with them). */
  compute: (electionId: Id) => Promise<(DashboardSnapshot & { watched?: string }) | null>;
  redis: Redis | undefined;
  /** Extra key templates to delete on change, e.g. `dashboard:{election_id}`. */
  extraKeys: readonly string[];
  metrics: Pick<Metrics, 'cacheRequests' | 'dashboardComputations'>;
  log: Logger;
  ttlSeconds?: number;
  /** How long a node waits for another node's computation before computing itself. */
  lockWaitMs?: number;
  /** Namespace of every Redis key (REDIS_PREFIX). */
  prefix?: string;
  /** Computations at once on this node (the size of the pool `compute` uses); requests go first. */
  concurrency?: number;
  /** Elections whose last change is remembered one by one; older marks collapse into one floor. */
  maxTracked?: number;
  /** Snapshots kept in process when there is no Redis. */
  maxLocal?: number;
  /** Keys per Redis DEL. */
  deleteChunk?: number;
  /** Told of every snapshot request (GET /dashboard/{id}): the notifier's "requested recently". */
  onRequest?: (electionId: Id) => void;
};

const NONE = '__none__'; // "no such election", returned as null, never stored

/** The cursor a snapshot's JSON carries. */
export const cursorOf = (json: string): Position | undefined => {
  const m = /"cursor":"([^"]+)"/.exec(json);
  return m?.[1] ? decodeCursor(m[1]) : undefined;
};

/** The hub.watched fingerprint a snapshot's JSON was counted under (src/db/snapshot.ts), if any. */
export const watchedOf = (json: string): string | undefined => /"watched":"([0-9a-f]*)"/.exec(json)?.[1];

/** At most `n` tasks at once; urgent ones (someone is waiting for the answer) go first. */
function createSlots(n: number) {
  let free = Math.max(1, n);
  const urgent: Array<() => void> = [];
  const background: Array<() => void> = [];
  const release = () => {
    const next = urgent.shift() ?? background.shift();
    if (next) next();
    else free++;
  };
  return async <T>(isUrgent: boolean, task: () => Promise<T>): Promise<T> => {
    if (free > 0) free--;
    else await new Promise<void>((resolve) => (isUrgent ? urgent : background).push(resolve));
    try {
      return await task();
    } finally {
      release();
    }
  };
}

/**
 * Snapshot cache: Redis when configured (shared by all nodes), in-process otherwise.
 * Freshness is decided by cursor, not by deleting keys: a snapshot is good for an election
 * when its cursor is at or past the last change this node has seen there. So nodes never
 * delete each other's fresh results, and with a short Redis lock one node computes per
 * burst while the others wait for its result. Redis trouble degrades to computing from
 * PostgreSQL; it never fails a request.
 *
 * Memory is bounded whatever the number of elections: the last change is remembered for the
 * `maxTracked` most recently changed elections; older marks fold into one `floor` position
 * (a snapshot of an election without a mark must reach it), which can only cause an extra
 * computation, never a stale answer. Computations run `concurrency` at a time.
 */
export function createDashboardCache(opts: DashboardCacheOptions): DashboardCache {
  const { redis, metrics, log } = opts;
  const ttl = opts.ttlSeconds ?? 3600;
  const lockWaitMs = opts.lockWaitMs ?? 3000;
  const maxTracked = opts.maxTracked ?? 10_000;
  const maxLocal = opts.maxLocal ?? 1000;
  const deleteChunk = opts.deleteChunk ?? 500;
  const local = new Map<Id, string>();
  // In order of the change (reader order: positions only grow), so the first is the oldest.
  const lastChange = new Map<Id, Position>();
  let floor: Position = ZERO;
  const inflight = new Map<Id, Promise<string | null>>();
  const slot = createSlots(opts.concurrency ?? 2);
  const token = randomBytes(8).toString('hex');
  const prefix = opts.prefix ?? 'hub:';
  const KEY = (id: Id) => `${prefix}dashboard:${id}`;
  const LOCK = (id: Id) => `${prefix}dashboard:lock:${id}`;

  const redisUp = () => redis !== undefined && redis.status === 'ready';
  const warn = (what: string) => (err: unknown) => {
    log.warn({ err: errorMessage(err) }, what);
    return undefined;
  };

  const read = async (id: Id): Promise<string | undefined> => {
    if (!redis) return local.get(id);
    if (!redisUp()) return undefined;
    return ((await redis.get(KEY(id)).catch(warn('dashboard cache read failed'))) ?? undefined) || undefined;
  };
  const write = async (id: Id, json: string) => {
    if (!redis) {
      local.delete(id);
      local.set(id, json);
      for (const old of local.keys()) {
        if (local.size <= maxLocal) break;
        local.delete(old);
      }
    } else if (redisUp()) await redis.set(KEY(id), json, 'EX', ttl).catch(warn('dashboard cache write failed'));
  };
  const fresh = (id: Id, json: string | undefined, o: RefreshOptions = {}): json is string => {
    if (json === undefined) return false;
    if (o.watched !== undefined && watchedOf(json) !== o.watched) return false;
    const c = cursorOf(json);
    return (
      c !== undefined && compare(c, lastChange.get(id) ?? floor) >= 0 && (o.min === undefined || compare(c, o.min) >= 0)
    );
  };

  const computeAndStore = (id: Id, urgent: boolean, reason?: RefreshOptions['reason']): Promise<string> =>
    slot(urgent, async () => {
      metrics.dashboardComputations.inc({ reason: reason ?? (lastChange.has(id) ? 'change' : 'first_use') });
      const snap = await opts.compute(id);
      if (!snap) return NONE; // not cached: the election may be created any moment
      const json = JSON.stringify(snap);
      await write(id, json);
      return json;
    });

  /** One computation per burst: locally single-flight, across nodes a short Redis lock. */
  const obtain = async (id: Id, urgent: boolean, o: RefreshOptions): Promise<string> => {
    if (!redis || !redisUp()) return computeAndStore(id, urgent, o.reason);
    const deadline = Date.now() + lockWaitMs;
    while (Date.now() < deadline) {
      const got = await redis.set(LOCK(id), token, 'PX', lockWaitMs, 'NX').catch(warn('dashboard lock failed'));
      if (got === 'OK') {
        try {
          return await computeAndStore(id, urgent, o.reason);
        } finally {
          // Release only our own lock.
          await redis
            .eval(
              `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`,
              1,
              LOCK(id),
              token,
            )
            .catch(warn('dashboard unlock failed'));
        }
      }
      if (!redisUp()) break;
      await new Promise((r) => setTimeout(r, 15));
      const other = await read(id);
      if (fresh(id, other, o)) return other;
    }
    return computeAndStore(id, urgent, o.reason);
  };

  const refresh = (id: Id, o: RefreshOptions = {}): Promise<string | null> => {
    const urgent = o.urgent ?? false;
    const running = inflight.get(id);
    // A failed computation of somebody else's is no answer for this one: compute again.
    const p = (running ?? Promise.resolve(undefined))
      .catch(() => undefined)
      .then(async (prev) => {
        if (o.fresh) {
          const json = await computeAndStore(id, urgent, o.reason);
          return json === NONE ? null : json;
        }
        // A computation that began before the latest change may be stale: check, then redo.
        if (prev !== undefined && prev !== null && fresh(id, prev, o)) return prev;
        const cached = await read(id);
        if (fresh(id, cached, o)) return cached;
        const json = await obtain(id, urgent, o);
        return json === NONE ? null : json;
      });
    const tracked = p.finally(() => {
      if (inflight.get(id) === tracked) inflight.delete(id);
    });
    inflight.set(id, tracked);
    return tracked;
  };

  // The app's keys of changed elections, deleted in chunks, one DEL in flight at a time. A key
  // changed again while its chunk is on the way is queued again (a later change, a later DEL).
  const doomed = new Set<string>();
  let deleting = false;
  const deleteKeys = async () => {
    if (deleting) return;
    deleting = true;
    try {
      while (doomed.size > 0 && redis && redisUp()) {
        const chunk: string[] = [];
        for (const k of doomed) {
          doomed.delete(k);
          chunk.push(k);
          if (chunk.length >= deleteChunk) break;
        }
        await redis.del(...chunk).catch(warn('deleting application cache keys failed'));
      }
      doomed.clear(); // Redis down: skipped, as every write while it is down
    } finally {
      deleting = false;
    }
  };

  return {
    async get(id) {
      opts.onRequest?.(id);
      const hit = await read(id);
      if (fresh(id, hit)) {
        metrics.cacheRequests.inc({ result: 'hit' });
        return hit;
      }
      metrics.cacheRequests.inc({ result: 'miss' });
      return refresh(id, { urgent: true });
    },
    refresh,
    invalidate(ids, seen) {
      for (const id of ids) {
        const prev = lastChange.get(id);
        if (!prev || compare(seen, prev) > 0) {
          lastChange.delete(id);
          lastChange.set(id, seen);
        }
        local.delete(id);
        if (redis) for (const t of opts.extraKeys) doomed.add(t.replaceAll('{election_id}', String(id)));
      }
      for (const [id, p] of lastChange) {
        if (lastChange.size <= maxTracked) break;
        lastChange.delete(id);
        if (compare(p, floor) > 0) floor = p;
      }
      if (doomed.size > 0) void deleteKeys();
    },
    invalidateAll(p) {
      lastChange.clear();
      local.clear();
      if (compare(p, floor) > 0) floor = p;
    },
    degraded: () => redis !== undefined && !redisUp(),
  };
}

/**
 * Elections whose snapshot was requested recently on this node (GET /dashboard/{id}), kept
 * for `ttlMs` after the last request or the last update published for it, at most `max` of
 * them (the least recently touched go first).
 */
export function createInterest(opts: { ttlMs: number; max: number; now?: () => number }) {
  const now = opts.now ?? Date.now;
  // In order of the last touch, so expired ones are at the front.
  const touched = new Map<Id, number>();
  const expire = (t: number) => {
    for (const [id, at] of touched) {
      if (touched.size <= opts.max && t - at <= opts.ttlMs) break;
      touched.delete(id);
    }
  };
  return {
    touch(id: Id): void {
      const t = now();
      touched.delete(id);
      touched.set(id, t);
      expire(t);
    },
    has(id: Id): boolean {
      const at = touched.get(id);
      if (at === undefined) return false;
      if (now() - at <= opts.ttlMs) return true;
      touched.delete(id);
      return false;
    },
    size: () => touched.size,
  };
}

export type Interest = ReturnType<typeof createInterest>;
