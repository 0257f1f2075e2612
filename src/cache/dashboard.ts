import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { DashboardSnapshot } from '../events/schema.ts';
import { errorMessage } from '../errors.ts';

export type DashboardCache = {
  /** The snapshot as JSON (serialized once), or null for an unknown election. */
  get(electionId: number): Promise<string | null>;
  /** Computes afresh (single-flight), stores it and returns it. */
  refresh(electionId: number): Promise<string | null>;
  /** Marks elections changed: drops cached snapshots and the application's own keys. */
  invalidate(electionIds: Iterable<number>): void;
  /** True while Redis is configured but unreachable (the cache is bypassed). */
  degraded(): boolean;
};

export type DashboardCacheOptions = {
  compute: (electionId: number) => Promise<DashboardSnapshot | null>;
  redis: Redis | undefined;
  /** Extra key templates to delete on change, e.g. `dashboard:{election_id}`. */
  extraKeys: readonly string[];
  metrics: Pick<Metrics, 'cacheRequests' | 'dashboardComputations'>;
  log: Logger;
  ttlSeconds?: number;
};

const KEY = (id: number) => `hub:dashboard:${id}`;

/**
 * Snapshot cache: Redis when configured (shared by all nodes), in-process otherwise.
 * Redis trouble degrades to computing from PostgreSQL; it never fails a request.
 * A generation per election keeps a computation that started before a change from
 * storing its older result over the invalidation.
 */
export function createDashboardCache(opts: DashboardCacheOptions): DashboardCache {
  const { redis, metrics, log } = opts;
  const ttl = opts.ttlSeconds ?? 3600;
  const local = new Map<number, string>();
  const generation = new Map<number, number>();
  const inflight = new Map<string, Promise<string | null>>();

  const redisUp = () => redis !== undefined && redis.status === 'ready';

  const store = async (id: number, json: string) => {
    if (!redis) {
      local.set(id, json);
      return;
    }
    if (!redisUp()) return;
    await redis.set(KEY(id), json, 'EX', ttl).catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'dashboard cache write failed'));
  };

  const compute = (id: number): Promise<string | null> => {
    const gen = generation.get(id) ?? 0;
    const key = `${id}:${gen}`;
    const running = inflight.get(key);
    if (running) return running;
    const p = (async () => {
      metrics.dashboardComputations.inc();
      const snap = await opts.compute(id);
      if (!snap) return null;
      const json = JSON.stringify(snap);
      if ((generation.get(id) ?? 0) === gen) await store(id, json);
      return json;
    })().finally(() => inflight.delete(key));
    inflight.set(key, p);
    return p;
  };

  const cached = async (id: number): Promise<string | undefined> => {
    if (!redis) return local.get(id);
    if (!redisUp()) return undefined;
    try {
      return (await redis.get(KEY(id))) ?? undefined;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, 'dashboard cache read failed');
      return undefined;
    }
  };

  return {
    async get(id) {
      const hit = await cached(id);
      metrics.cacheRequests.inc({ result: hit === undefined ? 'miss' : 'hit' });
      return hit ?? compute(id);
    },
    refresh: compute,
    invalidate(ids) {
      const keys: string[] = [];
      for (const id of ids) {
        generation.set(id, (generation.get(id) ?? 0) + 1);
        local.delete(id);
        keys.push(KEY(id), ...opts.extraKeys.map((t) => t.replaceAll('{election_id}', String(id))));
      }
      if (keys.length > 0 && redisUp() && redis) {
        redis.del(...keys).catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'dashboard cache invalidation failed'));
      }
    },
    degraded: () => redis !== undefined && !redisUp(),
  };
}

export type DashboardNotifier = {
  /** Elections whose data changed; a `dashboard_update` follows, coalesced per election. */
  changed(electionIds: Iterable<number>): void;
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
  waitForCursor: (cursor: string) => Promise<void>;
  publish: (electionId: number, frame: string) => void;
  log: Logger;
}): DashboardNotifier {
  const timers = new Map<number, NodeJS.Timeout>();
  const lastSent = new Map<number, number>();
  let stopped = false;

  const fire = async (id: number) => {
    timers.delete(id);
    lastSent.set(id, Date.now());
    try {
      const json = await opts.cache.refresh(id);
      if (!json || stopped) return;
      const cursor = (JSON.parse(json) as { cursor: string }).cursor;
      await opts.waitForCursor(cursor);
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
