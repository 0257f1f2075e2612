import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { DashboardSnapshot } from '../events/schema.ts';
import type { Id } from '../events/topics.ts';
import { errorMessage } from '../errors.ts';
import { randomBytes } from 'node:crypto';
import { type Position, compare, decodeCursor } from '../db/cursor.ts';

export type DashboardCache = {
  /** The snapshot as JSON (serialized once), or null for an unknown election. */
  get(electionId: Id): Promise<string | null>;
  /** A snapshot at least as new as every change seen so far (computed once across nodes). */
  refresh(electionId: Id): Promise<string | null>;
  /** Elections changed up to `seen`: older cached snapshots are stale; the app's keys are deleted. */
  invalidate(electionIds: Iterable<Id>, seen: Position): void;
  /**
   * A change of unknown elections up to `seen` (a TRUNCATE): every older snapshot is stale, here
   * and in Redis; returns the elections this cache knows of (the app's keys of those are deleted).
   */
  invalidateAll(seen: Position): Id[];
  /** True while Redis is configured but unreachable (the cache is bypassed). */
  degraded(): boolean;
};

export type DashboardCacheOptions = {
  compute: (electionId: Id) => Promise<DashboardSnapshot | null>;
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
};

const NONE = '__none__'; // "no such election", returned as null, never stored

const cursorOf = (json: string): Position | undefined => {
  const m = /"cursor":"([^"]+)"/.exec(json);
  return m?.[1] ? decodeCursor(m[1]) : undefined;
};

/**
 * Snapshot cache: Redis when configured (shared by all nodes), in-process otherwise.
 * Freshness is decided by cursor, not by deleting keys: a snapshot is good for an election
 * when its cursor is at or past the last change this node has seen there. So nodes never
 * delete each other's fresh results, and with a short Redis lock one node computes per
 * burst while the others wait for its result. Redis trouble degrades to computing from
 * PostgreSQL; it never fails a request.
 */
export function createDashboardCache(opts: DashboardCacheOptions): DashboardCache {
  const { redis, metrics, log } = opts;
  const ttl = opts.ttlSeconds ?? 3600;
  const lockWaitMs = opts.lockWaitMs ?? 3000;
  const local = new Map<Id, string>();
  const lastChange = new Map<Id, Position>();
  const inflight = new Map<Id, Promise<string | null>>();
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
    if (!redis) local.set(id, json);
    else if (redisUp()) await redis.set(KEY(id), json, 'EX', ttl).catch(warn('dashboard cache write failed'));
  };
  let floor: Position | undefined; // no snapshot older than this is fresh, whatever its election
  const fresh = (id: Id, json: string | undefined): json is string => {
    if (json === undefined) return false;
    const c = cursorOf(json);
    const need = lastChange.get(id);
    return c !== undefined && (need === undefined || compare(c, need) >= 0) && (floor === undefined || compare(c, floor) >= 0);
  };

  const computeAndStore = async (id: Id): Promise<string> => {
    metrics.dashboardComputations.inc({ reason: lastChange.has(id) ? 'change' : 'first_use' });
    const snap = await opts.compute(id);
    if (!snap) return NONE; // not cached: the election may be created any moment
    const json = JSON.stringify(snap);
    await write(id, json);
    return json;
  };

  /** One computation per burst: locally single-flight, across nodes a short Redis lock. */
  const obtain = async (id: Id): Promise<string> => {
    if (!redis || !redisUp()) return computeAndStore(id);
    const deadline = Date.now() + lockWaitMs;
    while (Date.now() < deadline) {
      const got = await redis.set(LOCK(id), token, 'PX', lockWaitMs, 'NX').catch(warn('dashboard lock failed'));
      if (got === 'OK') {
        try {
          return await computeAndStore(id);
        } finally {
          // Release only our own lock.
          await redis
            .eval(`if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`, 1, LOCK(id), token)
            .catch(warn('dashboard unlock failed'));
        }
      }
      if (!redisUp()) break;
      await new Promise((r) => setTimeout(r, 15));
      const other = await read(id);
      if (fresh(id, other)) return other;
    }
    return computeAndStore(id);
  };

  const refresh = (id: Id): Promise<string | null> => {
    const running = inflight.get(id);
    const p = (running ?? Promise.resolve(undefined)).then(async (prev) => {
      // A computation that began before the latest change may be stale: check, then redo.
      if (prev !== undefined && prev !== null && fresh(id, prev)) return prev;
      const cached = await read(id);
      if (fresh(id, cached)) return cached;
      const json = await obtain(id);
      return json === NONE ? null : json;
    });
    const tracked = p.finally(() => {
      if (inflight.get(id) === tracked) inflight.delete(id);
    });
    inflight.set(id, tracked);
    return tracked;
  };

  const invalidate = (ids: Iterable<Id>, seen: Position) => {
    const keys: string[] = [];
    for (const id of ids) {
      const prev = lastChange.get(id);
      if (!prev || compare(seen, prev) > 0) lastChange.set(id, seen);
      local.delete(id);
      keys.push(...opts.extraKeys.map((t) => t.replaceAll('{election_id}', String(id))));
    }
    if (keys.length > 0 && redisUp() && redis) redis.del(...keys).catch(warn('deleting application cache keys failed'));
  };

  return {
    async get(id) {
      const hit = await read(id);
      if (fresh(id, hit)) {
        metrics.cacheRequests.inc({ result: 'hit' });
        return hit;
      }
      metrics.cacheRequests.inc({ result: 'miss' });
      return refresh(id);
    },
    refresh,
    invalidate,
    invalidateAll(seen) {
      if (!floor || compare(seen, floor) > 0) floor = seen;
      const ids = [...new Set([...lastChange.keys(), ...local.keys()])];
      invalidate(ids, seen);
      return ids;
    },
    degraded: () => redis !== undefined && !redisUp(),
  };
}

export type DashboardNotifier = {
  /** Elections whose data changed; a `dashboard_update` follows, coalesced per election. */
  changed(electionIds: Iterable<Id>): void;
  stop(): void;
};

/**
 * At most one `dashboard_update` per election per `debounceMs`. Each is published only
 * once the reader has delivered every event up to the snapshot's cursor, so a client can
 * replace its totals with the update and apply the events that follow it.
 */
export function createDashboardNotifier(opts: {
  cache: DashboardCache;
  debounceMs: number;
  waitForCursor: (cursor: Position) => Promise<void>;
  publish: (electionId: Id, frame: string) => void;
  log: Logger;
}): DashboardNotifier {
  const timers = new Map<Id, NodeJS.Timeout>();
  const lastSent = new Map<Id, number>();
  let stopped = false;

  const fire = async (id: Id) => {
    timers.delete(id);
    lastSent.set(id, Date.now());
    try {
      const json = await opts.cache.refresh(id);
      if (!json || stopped) return;
      const cursor = cursorOf(json);
      if (cursor) await opts.waitForCursor(cursor);
      if (!stopped) opts.publish(id, `{"type":"dashboard_update",${json.slice(1)}`);
    } catch (err) {
      opts.log.warn({ electionId: id, err: errorMessage(err) }, 'dashboard update failed');
    }
  };

  return {
    changed(ids) {
      if (stopped) return;
      for (const id of ids) {
        if (timers.has(id)) continue;
        const since = Date.now() - (lastSent.get(id) ?? 0);
        const delay = Math.max(20, opts.debounceMs - since);
        timers.set(id, setTimeout(() => void fire(id), delay));
      }
    },
    stop() {
      stopped = true;
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
    },
  };
}
