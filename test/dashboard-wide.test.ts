// Issue 15, item 6: one statement touching 20 000 elections made the hub compute 20 000
// dashboard snapshots on the reader's pool, delaying every other election's rows by seconds.
// Dashboard work is now bounded by who watches on this node, on a pool of its own.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './support/db.ts';
import { type Frame, connect, startTestHub, token, waitUntil } from './support/hub.ts';
import type { Hub } from '../src/main.ts';

const WIDE = Number(process.env.WIDE_ELECTIONS ?? 20_000);

let db: TestDatabase;
let hub: Hub;
let redis: Redis;
let lo: number; // the wide statement's elections: lo..hi, one committee each
let hi: number;
let other: { e: number; c: number };
const appKeys = `wide${Date.now().toString(36)}`;

beforeAll(async () => {
  db = await createTestDatabase();
  const ids = await db.pool.query<{ lo: string; hi: string }>(
    `WITH e AS (INSERT INTO elections (name) SELECT 'Election ' || g FROM generate_series(1, $1::int) g RETURNING id),
          c AS (INSERT INTO committees (election_id, name) SELECT id, 'Committee of ' || id FROM e RETURNING election_id)
     SELECT min(election_id)::text lo, max(election_id)::text hi FROM c`,
    [WIDE],
  );
  lo = Number(ids.rows[0]?.lo);
  hi = Number(ids.rows[0]?.hi);
  const e = await db.pool.query<{ id: number }>(`INSERT INTO elections (name) VALUES ('Other') RETURNING id`);
  const oe = Number(e.rows[0]?.id);
  const c = await db.pool.query<{ id: number }>(
    `INSERT INTO committees (election_id, name) VALUES ($1, 'Other committee') RETURNING id`,
    [oe],
  );
  other = { e: oe, c: Number(c.rows[0]?.id) };
  redis = new Redis(inject('redisUrl'));
  hub = await startTestHub(db.url, { REDIS_URL: inject('redisUrl'), DASHBOARD_CACHE_KEYS: `${appKeys}:{election_id}` });
}, 120_000);

afterAll(async () => {
  await hub?.stop();
  await redis?.quit();
  await db?.drop();
});

const computations = async () =>
  ((await hub.metrics.registry.getSingleMetric('hub_dashboard_computations_total')?.get())?.values ?? []).reduce(
    (n, v) => n + v.value,
    0,
  );
const updates = (fs: Frame[], election: number) =>
  fs.filter((f) => f.type === 'dashboard_update' && f.election_id === election);
const guarantees = (f: Frame | undefined) => (f?.totals as { guarantees: number } | undefined)?.guarantees;

it('a statement touching 20 000 elections computes only the watched ones; another election’s row is not held up by dashboard work', async () => {
  const watchedInWide = lo + 7;
  const lazy = hi - 3; // in the statement, watched by nobody
  const otherViewer = await connect(hub, { token: await token({ sub: 'other-viewer', elections: [other.e] }) });
  const wideViewer = await connect(hub, { token: await token({ sub: 'wide-viewer', elections: [watchedInWide] }) });
  // An admin on election:* receives every row, but does not make every election's totals maintained.
  const admin = await connect(hub, { token: await token({ sub: 'wide-admin', role: 'admin' }) });
  for (const c of [otherViewer, wideViewer, admin]) await c.next((f) => f.type === 'connection_success');
  await redis.set(`${appKeys}:${lazy}`, 'stale app cache');
  await redis.set(`${appKeys}:${watchedInWide}`, 'stale app cache');
  const before = await computations();

  await db.pool.query(
    `INSERT INTO guarantees (election_id, committee_id) SELECT election_id, id FROM committees WHERE election_id BETWEEN $1 AND $2`,
    [lo, hi],
  );
  const row = await db.pool.query<{ id: number }>(
    `INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2) RETURNING id`,
    [other.e, other.c],
  );
  const written = Date.now();
  const mine = (f: Frame) => f.type === 'guarantee_update' && f.election_id === other.e && f.id === row.rows[0]?.id;
  await otherViewer.next(mine, 30_000);
  const latencyMs = Date.now() - written;

  // The watched elections get their update, with numbers that include the statement.
  const fromWide = await wideViewer.next((f) => f.type === 'dashboard_update' && guarantees(f) === 1, 30_000);
  expect(fromWide.election_id).toBe(watchedInWide);
  await otherViewer.next((f) => f.type === 'dashboard_update' && guarantees(f) === 1, 30_000);
  await waitUntil(
    () => admin.events().length >= WIDE + 1,
    30_000,
    `every row on election:* (${admin.events().length})`,
  );
  await new Promise((r) => setTimeout(r, 600)); // a few debounce intervals: anything still queued would start now
  const spent = (await computations()) - before;
  console.log(
    `wide statement: ${WIDE} elections; another election's row after ${latencyMs} ms; ${spent} dashboard computations`,
  );
  expect(spent).toBeLessThanOrEqual(4); // the two watched elections (once each, maybe once more)
  // election:* alone receives no dashboard updates (issue 11: an admin subscribes dashboard:{id} for those).
  expect(admin.frames.filter((f) => f.type === 'dashboard_update')).toEqual([]);
  expect(updates(wideViewer.frames, watchedInWide).length).toBeLessThanOrEqual(2);

  // The others were only marked stale: computed on request, with the statement counted, then cached.
  const viewer = await token({ sub: 'lazy', elections: [lazy] });
  const get = async () =>
    (await (
      await fetch(`${hub.url}/dashboard/${lazy}`, { headers: { authorization: `Bearer ${viewer}` } })
    ).json()) as Frame;
  expect(guarantees(await get())).toBe(1);
  expect((await computations()) - before).toBe(spent + 1);
  expect(guarantees(await get())).toBe(1);
  expect((await computations()) - before).toBe(spent + 1);

  // The app's cache keys of every changed election were deleted (in chunks, not one DEL).
  await waitUntil(
    async () => (await redis.exists(`${appKeys}:${lazy}`, `${appKeys}:${watchedInWide}`)) === 0,
    10_000,
    'app keys deleted',
  );
  for (const c of [otherViewer, wideViewer, admin]) await c.close();
}, 180_000);

it('with 1 000 watched elections in the statement, their computations queue on their own pool: other rows and snapshot requests do not wait for them', async () => {
  const WATCHED = 1000;
  const watchers = await Promise.all(
    Array.from({ length: WATCHED }, async (_, i) =>
      connect(hub, { token: await token({ sub: `watcher-${i}`, elections: [lo + 100 + i] }) }),
    ),
  );
  for (const w of watchers) await w.next((f) => f.type === 'connection_success');
  const otherViewer = await connect(hub, { token: await token({ sub: 'other-viewer-2', elections: [other.e] }) });
  await otherViewer.next((f) => f.type === 'connection_success');
  const updated = () =>
    watchers.filter((w) => w.frames.some((f) => f.type === 'dashboard_update' && guarantees(f) === 2)).length;
  const before = await computations();

  await db.pool.query(
    `INSERT INTO guarantees (election_id, committee_id) SELECT election_id, id FROM committees WHERE election_id BETWEEN $1 AND $2`,
    [lo, hi],
  );
  const row = await db.pool.query<{ id: number }>(
    `INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2) RETURNING id`,
    [other.e, other.c],
  );
  await otherViewer.next((f) => f.type === 'guarantee_update' && f.id === row.rows[0]?.id, 30_000);
  const doneAtRow = updated();
  // A snapshot request goes ahead of the queued updates.
  const lazy = hi - 5;
  const viewer = await token({ sub: 'lazy-2', elections: [lazy] });
  const snap = (await (
    await fetch(`${hub.url}/dashboard/${lazy}`, { headers: { authorization: `Bearer ${viewer}` } })
  ).json()) as Frame;
  const doneAtSnapshot = updated();
  expect(guarantees(snap)).toBe(2);

  await waitUntil(() => updated() === WATCHED, 60_000, `every watched election's update (${updated()}/${WATCHED})`);
  console.log(
    `1000 watched: ${doneAtRow} updates done when the other row arrived, ${doneAtSnapshot} when the snapshot answered`,
  );
  expect(doneAtRow).toBeLessThan(WATCHED);
  expect(doneAtSnapshot).toBeLessThan(WATCHED);
  // About time, not an event: computations that should NOT happen have no event to wait for;
  // a few debounce intervals (250 ms) are when any extra one would have started.
  await new Promise((r) => setTimeout(r, 600));
  // One computation per watched election (and one for the other election, one for the request).
  expect((await computations()) - before).toBeLessThanOrEqual(WATCHED + 4);
  await Promise.all([...watchers, otherViewer].map((c) => c.close()));
}, 180_000);
