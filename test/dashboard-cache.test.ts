// The dashboard cache and notifier alone (no services): bounded work and memory per statement,
// whatever the number of elections it touches (issue 15, item 6).
import type { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { createDashboardCache, createInterest } from '../src/cache/dashboard.ts';
import { type Position, encodeCursor } from '../src/events/position.ts';
import { createLogger } from '../src/log.ts';
import { type Metrics, createMetrics } from '../src/metrics/index.ts';
import type { DashboardSnapshot } from '../src/events/schema.ts';
import { waitUntil } from './support/hub.ts';

const log = createLogger('silent');
const at = (seq: number): Position => ({ seq: BigInt(seq), id: 0n });
const snapshot = (id: string, p: Position): DashboardSnapshot => ({
  election_id: Number(id),
  cursor: encodeCursor(p),
  totals: { guarantees: 0, attendance: 0, votes: 0 },
  committees: [],
});
const counter = async (m: Metrics) =>
  ((await m.registry.getSingleMetric('hub_dashboard_computations_total')?.get())?.values ?? []).reduce(
    (n, v) => n + v.value,
    0,
  );

/** Just what the cache uses of ioredis: strings with NX/PX/EX, DEL, and the unlock script. */
function fakeRedis(opts: { delDelayMs?: number } = {}) {
  const store = new Map<string, string>();
  const dels: number[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const redis = {
    status: 'ready',
    async get(k: string) {
      return store.get(k) ?? null;
    },
    async set(k: string, v: string, ...args: unknown[]) {
      if (args.includes('NX') && store.has(k)) return null;
      store.set(k, v);
      return 'OK';
    },
    async del(...keys: string[]) {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      dels.push(keys.length);
      await new Promise((r) => setTimeout(r, opts.delDelayMs ?? 0));
      for (const k of keys) store.delete(k);
      inFlight--;
      return keys.length;
    },
    async eval(_script: string, _n: number, key: string, token: string) {
      if (store.get(key) === token) store.delete(key);
      return 1;
    },
  };
  return { redis: redis as unknown as Redis, store, dels, maxInFlight: () => maxInFlight };
}

describe('dashboard cache', () => {
  it('forgets old change marks beyond maxTracked without ever serving a snapshot older than a change', async () => {
    const metrics = createMetrics();
    const fake = fakeRedis();
    let db = at(10);
    const cache = createDashboardCache({
      compute: async (id) => snapshot(id, db),
      redis: fake.redis,
      extraKeys: [],
      metrics,
      log,
      maxTracked: 2,
    });
    for (const id of ['1', '2', '3']) await cache.get(id);
    expect(await counter(metrics)).toBe(3);
    await cache.get('1');
    expect(await counter(metrics)).toBe(3); // fresh: a hit

    cache.invalidate(['1'], at(20));
    cache.invalidate(['2'], at(30));
    cache.invalidate(['3'], at(40)); // election 1's mark folds into the floor (20)
    db = at(50);
    expect(JSON.parse((await cache.get('1')) ?? '{}').cursor).toBe(encodeCursor(at(50))); // recomputed, not the stale (10)
    expect(await counter(metrics)).toBe(4);
    // An election without a mark: another node's snapshot at or past the floor is good...
    fake.store.set('hub:dashboard:7', JSON.stringify(snapshot('7', at(25))));
    await cache.get('7');
    expect(await counter(metrics)).toBe(4);
    // ...one below it might predate a forgotten change, so it is recomputed.
    fake.store.set('hub:dashboard:8', JSON.stringify(snapshot('8', at(15))));
    await cache.get('8');
    expect(await counter(metrics)).toBe(5);
  });

  it('deletes the app keys of 20 000 changed elections in chunks, one DEL at a time', async () => {
    const fake = fakeRedis({ delDelayMs: 1 });
    for (let id = 1; id <= 20_000; id++) fake.store.set(`app:${id}`, 'x');
    const cache = createDashboardCache({
      compute: async (id) => snapshot(id, at(1)),
      redis: fake.redis,
      extraKeys: ['app:{election_id}'],
      metrics: createMetrics(),
      log,
    });
    cache.invalidate(
      Array.from({ length: 20_000 }, (_, i) => String(i + 1)),
      at(5),
    );
    await waitUntil(() => fake.store.size === 0, 10_000, 'keys deleted');
    expect(fake.dels.reduce((a, b) => a + b, 0)).toBe(20_000);
    expect(Math.max(...fake.dels)).toBeLessThanOrEqual(500);
    expect(fake.maxInFlight()).toBe(1);
  });

  it('runs at most `concurrency` computations at once, and a request goes before queued updates', async () => {
    let running = 0;
    let most = 0;
    const order: string[] = [];
    const gates: Array<() => void> = [];
    const cache = createDashboardCache({
      compute: async (id) => {
        running++;
        most = Math.max(most, running);
        order.push(String(id));
        await new Promise<void>((r) => gates.push(r));
        running--;
        return snapshot(id, at(1));
      },
      redis: undefined,
      extraKeys: [],
      metrics: createMetrics(),
      log,
      concurrency: 2,
    });
    const background = ['1', '2', '3', '4', '5'].map((id) => cache.refresh(id));
    await waitUntil(() => gates.length === 2, 2000, 'two computations started');
    const request = cache.get('99');
    while (order.length < 6) {
      gates.shift()?.();
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const g of gates.splice(0)) g();
    await Promise.all([...background, request]);
    expect(most).toBe(2);
    expect(order.slice(0, 3)).toEqual(['1', '2', '99']);
  });
  // Commit keys (sql/006_commit_order.sql) move only with outbox rows: a write that bypassed the
  // triggers, or a change of hub.watched, leaves every cursor where it was.
  it('a fresh refresh computes anew although the cached snapshot is at `min`, and stores its result', async () => {
    for (const fake of [undefined, fakeRedis()]) {
      const metrics = createMetrics();
      let guarantees = 1;
      const cache = createDashboardCache({
        compute: async (id) => ({ ...snapshot(id, at(10)), totals: { guarantees, attendance: 0, votes: 0 } }),
        redis: fake?.redis,
        extraKeys: [],
        metrics,
        log,
      });
      const first = JSON.parse((await cache.refresh('1', { reason: 'first_use', min: at(10) })) ?? '{}');
      expect(first.totals.guarantees).toBe(1);
      guarantees = 5; // changed in the database; no cursor moved
      const stale = JSON.parse((await cache.refresh('1', { reason: 'resync', min: at(10) })) ?? '{}');
      expect(stale.totals.guarantees).toBe(1); // by cursor it is fresh: shared
      const fresh = JSON.parse((await cache.refresh('1', { reason: 'verify', min: at(10), fresh: true })) ?? '{}');
      expect(fresh.totals.guarantees).toBe(5);
      expect(await counter(metrics)).toBe(2);
      const after = JSON.parse((await cache.refresh('1', { min: at(10) })) ?? '{}');
      expect(after.totals.guarantees).toBe(5); // the fresh one was stored
      expect(await counter(metrics)).toBe(2);
    }
  });
  // computeSnapshot fails when a late TRUNCATE's lower keys stay committing (src/db/snapshot.ts).
  it('a failed computation rejects the request, caches nothing, keeps no lock; the next request computes at once', async () => {
    for (const fake of [undefined, fakeRedis()]) {
      let fail = true;
      const cache = createDashboardCache({
        compute: async (id) => {
          if (fail) throw new Error('keys below a late TRUNCATE still committing');
          return snapshot(id, at(10));
        },
        redis: fake?.redis,
        extraKeys: [],
        metrics: createMetrics(),
        log,
        lockWaitMs: 5000,
      });
      await expect(cache.get('1')).rejects.toThrow(/late TRUNCATE/);
      expect([...(fake?.store.keys() ?? [])]).toEqual([]);
      fail = false;
      const t0 = Date.now();
      expect(JSON.parse((await cache.get('1')) ?? '{}').cursor).toBe(encodeCursor(at(10)));
      expect(Date.now() - t0).toBeLessThan(1000); // not waiting out a lock left behind
    }
  });
});

describe('interest', () => {
  it('lasts ttl after the last touch and holds at most max elections', () => {
    let now = 0;
    const interest = createInterest({ ttlMs: 100, max: 3, now: () => now });
    for (const id of ['1', '2', '3', '4']) interest.touch(id);
    expect(['1', '2', '3', '4'].map((id) => interest.has(id))).toEqual([false, true, true, true]);
    now = 90;
    interest.touch('2');
    now = 150;
    expect(['2', '3', '4'].map((id) => interest.has(id))).toEqual([true, false, false]);
    interest.touch('9');
    expect(interest.size()).toBe(2);
  });
});
