import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  type Frame,
  type TestClient,
  connect,
  eventsReceived,
  outboxHead,
  reached,
  readPast,
  startTestHub,
  token,
  untilMarker,
  waitUntil,
  when,
} from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { ZERO, compare, decodeCursor } from '../src/events/position.ts';

let db: TestDatabase;
let e1: number;
let c1: number;
let admin: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
  admin = await token({ sub: 'ordering-admin', role: 'admin' });
});
afterAll(async () => db?.drop());

const pos = (f: Frame) => {
  const p = decodeCursor(f.cursor);
  if (!p) throw new Error(`bad cursor ${String(f.cursor)}`);
  return p;
};
const inCursorOrder = (frames: Frame[]) =>
  frames.every((f, i) => i === 0 || compare(pos(frames[i - 1] as Frame), pos(f)) < 0);
const insert = (pool: pg.Pool, n = 1, table = 'guarantees') =>
  pool.query(
    `INSERT INTO ${table} (election_id, committee_id, voter_name) SELECT $1, $2, 'v' || g FROM generate_series(1, $3::int) g`,
    [e1, c1, n],
  );
const rowIds = (frames: Frame[]) => frames.map((f) => f.id as number);

/** Connects without auto-subscription and resumes `topics` from `since`. */
async function resume(hub: Hub, topics: string[], since: string | undefined): Promise<TestClient> {
  const c = await connect(hub, { token: admin, query: 'subscribe=none' });
  c.send({ type: 'subscribe', topics, ...(since ? { since } : {}) });
  await c.next((f) => f.type === 'subscribed');
  return c;
}

describe('lossless, ordered delivery', () => {
  it('pg_terminate_backend of every hub connection while 200 rows are written: all 200 arrive once, in cursor order', async () => {
    const hub = await startTestHub(db.url);
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    const killer = new pg.Client({ connectionString: db.url });
    await killer.connect();
    const writer = (async () => {
      for (let i = 0; i < 200; i++) {
        await db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [
          e1,
          c1,
          `k${i}`,
        ]);
        if (i % 40 === 20) {
          await killer.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'election-hub%'`);
        }
      }
    })();
    await writer;
    const events = await eventsReceived(c, 200, 30_000);
    expect(await untilMarker(db.pool, c)).toHaveLength(200);
    expect(events.map((f) => (f.data as { voter_name: string }).voter_name)).toEqual(
      Array.from({ length: 200 }, (_, i) => `k${i}`),
    );
    expect(inCursorOrder(events)).toBe(true);
    await waitUntil(async () => (await fetch(`${hub.url}/ready`)).status === 200, 10_000, 'ready again');
    await killer.end();
    await c.close();
    await hub.stop();
  }, 60_000);

  it('a transaction that took its id first and commits last is neither skipped nor duplicated', async () => {
    const hub = await startTestHub(db.url);
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    const early = new pg.Client({ connectionString: db.url });
    early.on('error', () => undefined);
    await early.connect();
    await early.query('BEGIN');
    await early.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'early')`, [
      e1,
      c1,
    ]);
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'late')`, [
      e1,
      c1,
    ]);
    // The order is the commit order: 'late' committed first and goes out while 'early' is open
    // (before commit keys it waited for 'early' to end).
    const [late] = await eventsReceived(c, 1);
    expect((late?.data as { voter_name: string }).voter_name).toBe('late');
    // A client that stops here holds a cursor 'early' has not committed below.
    const seam = String(late?.cursor);
    await early.query('COMMIT');
    await early.end();
    const events = await eventsReceived(c, 2);
    expect(events.map((f) => (f.data as { voter_name: string }).voter_name)).toEqual(['late', 'early']);
    expect(inCursorOrder(events)).toBe(true);
    // Resuming from the cursor taken before 'early' committed: 'early' comes, once.
    const fromSeam = await resume(hub, ['election:*'], seam);
    expect(fromSeam.events().map((f) => (f.data as { voter_name: string }).voter_name)).toEqual(['early']);
    await fromSeam.close();
    // Resuming from the later cursor: no duplicate, nothing missed.
    const last = String(events[1]?.cursor);
    await c.close();
    const r = await resume(hub, ['election:*'], last);
    await insert(db.pool, 1);
    const after = await eventsReceived(r, 1);
    expect(await untilMarker(db.pool, r, 'election:*')).toHaveLength(1);
    expect(compare(pos(after[0] as Frame), decodeCursor(last) ?? ZERO)).toBeGreaterThan(0);
    await r.close();
    await hub.stop();
  }, 30_000);

  it('disconnect, 30 rows written, reconnect with since: exactly those 30, then live ones, no duplicate at the seam', async () => {
    const hub = await startTestHub(db.url);
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    await insert(db.pool, 1);
    const [seen] = await eventsReceived(c, 1);
    await c.close();
    for (let i = 0; i < 30; i++) await insert(db.pool, 1);
    // Let the hub read past the writes, so all 30 are replayed (not some replayed, some live).
    await readPast(hub, db.pool);
    const r = await resume(hub, ['election:*'], String(seen?.cursor));
    // Replayed events come before `subscribed`.
    const subscribedAt = r.frames.findIndex((f) => f.type === 'subscribed');
    expect(r.frames.slice(0, subscribedAt).filter((f) => f.type === 'guarantee_update').length).toBe(30);
    const live = (async () => {
      for (let i = 0; i < 10; i++) await insert(db.pool, 1);
    })();
    await live;
    const all = await eventsReceived(r, 40);
    expect(await untilMarker(db.pool, r, 'election:*')).toHaveLength(40);
    expect(new Set(rowIds(all)).size).toBe(40);
    expect(inCursorOrder(all)).toBe(true);
    await r.close();
    await hub.stop();
  });

  it('resume while writes continue: the seam between replay and live has no gap and no duplicate', async () => {
    const hub = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '50' });
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    const start = String(c.frames[0]?.cursor);
    await c.close();
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        await insert(db.pool, 7);
        written += 7;
      }
    })();
    // The ring holds only 50 events: the replay must page from PostgreSQL, then hand over.
    await waitUntil(() => written >= 140, 30_000, 'more rows than the ring holds');
    const r = await resume(hub, ['election:*'], start);
    const resumedAt = written;
    await waitUntil(() => written >= resumedAt + 70, 30_000, 'writes after the seam');
    writing = false;
    await writer;
    const all = await eventsReceived(r, written, 30_000);
    expect(await untilMarker(db.pool, r, 'election:*')).toHaveLength(written);
    expect(inCursorOrder(all)).toBe(true);
    await r.close();
    await hub.stop();
  }, 60_000);

  it('a reader that stops reading is closed with 4008, everyone else gets all 10 000, and it resumes with all of them', async () => {
    // Uncompressed: these repetitive rows deflate to almost nothing, and the slow reader's kernel
    // buffers would swallow them all before the hub's filled (compression: test/compression.test.ts).
    const hub = await startTestHub(db.url, { MAX_BACKPRESSURE_BYTES: '65536', WS_COMPRESSION: 'off' });
    const fast = await connect(hub, { token: admin });
    const slow = await connect(hub, { token: admin });
    await fast.next((f) => f.type === 'connection_success');
    await slow.next((f) => f.type === 'connection_success');
    const startCursor = String(slow.frames[0]?.cursor);
    // Stop reading: the kernel buffers fill, then the hub's.
    const raw = (slow.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    raw.pause();
    await db.pool.query(
      `INSERT INTO attendance (election_id, committee_id, voter_name) SELECT $1, $2, repeat('x', 2000) || g FROM generate_series(1, 10000) g`,
      [e1, c1],
    );
    const fastEvents = await eventsReceived(fast, 10_000, 60_000);
    expect(fastEvents).toHaveLength(10_000);
    await waitUntil(
      async () =>
        /hub_slow_reader_closes_total\{cause="socket_limit"\} [1-9]/.test(
          await (await fetch(`${hub.metricsUrl}/metrics`)).text(),
        ),
      10_000,
      'a 4008 close',
    );
    raw.resume();
    const closed = await slow.closed;
    expect(closed.code).toBe(4008);
    const got = slow.events();
    expect(got.length).toBeLessThan(10_000);
    expect(inCursorOrder(got)).toBe(true);
    const r = await resume(hub, ['election:*'], got.length ? String(got[got.length - 1]?.cursor) : startCursor);
    const rest = await eventsReceived(r, 10_000 - got.length, 60_000);
    expect([...got, ...rest].map((f) => (f.data as { voter_name: string }).voter_name)).toEqual(
      fastEvents.map((f) => (f.data as { voter_name: string }).voter_name),
    );
    await Promise.all([fast.close(), r.close()]);
    await hub.stop();
  }, 120_000);

  it('hub restart with writes during the downtime: clients closed with 1001 resume and get every event', async () => {
    let hub = await startTestHub(db.url);
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    await insert(db.pool, 5);
    const before = await eventsReceived(c, 5);
    const stopping = hub.stop();
    expect((await c.closed).code).toBe(1001);
    await stopping;
    await insert(db.pool, 25);
    hub = await startTestHub(db.url);
    const r = await resume(hub, ['election:*'], String(before[before.length - 1]?.cursor));
    await insert(db.pool, 5);
    const after = await eventsReceived(r, 30);
    expect(await untilMarker(db.pool, r, 'election:*')).toHaveLength(30);
    expect(inCursorOrder([...before, ...after])).toBe(true);
    await r.close();
    await hub.stop();
  });

  it('a cursor older than the retention answers resync', async () => {
    const hub = await startTestHub(db.url, { OUTBOX_RETENTION: '1s' });
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    await insert(db.pool, 3);
    const three = await eventsReceived(c, 3);
    const first = three[0];
    const third = pos(three[2] as Frame);
    await c.close();
    await waitUntil(
      async () => {
        const r = await db.pool.query<{ old: boolean }>(
          // No row left means the hub already pruned them: older than the retention too.
          `SELECT coalesce(max(committed_at) < now() - interval '1 second', true) AS old FROM hub.outbox_in_order WHERE (seq, id) <= ($1::bigint, $2::bigint)`,
          [third.seq.toString(), third.id.toString()],
        );
        return r.rows[0]?.old === true;
      },
      10_000,
      'the three rows to be older than the retention',
    );
    await insert(db.pool, 1);
    await waitUntil(
      async () => {
        const r = await db.pool.query<{ n: string }>(
          `SELECT count(*)::text n FROM hub.outbox WHERE committed_at < now() - interval '1 second'`,
        );
        return r.rows[0]?.n === '0';
      },
      30_000,
      'pruning',
    );
    await when(
      hub,
      'pruned',
      () => reached(hub.prunedMark(), third),
      `the hub to learn that pruning passed ${String(three[2]?.cursor)}`,
    );
    const r = await connect(hub, { token: admin, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: ['election:*'], since: String(first?.cursor) });
    expect(await r.next((f) => f.type === 'resync' || f.type === 'subscribed')).toMatchObject({
      type: 'resync',
      topics: ['election:*'],
    });
    expect(await r.next((f) => f.type === 'subscribed')).toMatchObject({ topics: ['election:*'] });
    r.send({ type: 'subscribe', topics: ['election:*'], since: 'zzzz' });
    expect(await r.next((f) => f.type === 'error')).toMatchObject({ code: 'bad_cursor' });
    await r.close();
    await hub.stop();
  }, 30_000);
});

describe('pruning by another node', () => {
  it('a resume below what another node pruned answers resync, never a silent gap', async () => {
    const old = await startTestHub(db.url);
    const first = await connect(old, { token: admin });
    const cs = await first.next((f) => f.type === 'connection_success');
    await first.close();
    await old.stop();
    await insert(db.pool, 5);
    const written = await outboxHead(db.pool);
    // B learns how far pruning went only every 30 s (the production default): once at start…
    // (Its ring of one event keeps the five rows out of B's memory even when a held horizon
    // made B read them live: the resume must go to PostgreSQL.)
    const b = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '1' }, { pruneEveryMs: 30_000 });
    await when(b, 'pruned', () => b.prunedMark() !== undefined, "B's first look at the pruned mark");
    expect(reached(b.prunedMark(), written)).toBe(false);
    // …while node A prunes everything in between.
    const a = await startTestHub(db.url, { OUTBOX_RETENTION: '1ms' });
    await when(a, 'pruned', () => reached(a.prunedMark(), written), 'A to prune the five rows');
    const again = await connect(b, { token: admin, query: 'subscribe=none' });
    await again.next((f) => f.type === 'connection_success');
    again.send({ type: 'subscribe', topics: ['election:*'], since: cs.cursor });
    await again.next((f) => f.type === 'subscribed');
    expect(again.frames.map((f) => f.type)).toContain('resync');
    await again.close();
    await a.stop();
    await b.stop();
  });
});

describe('snapshot + since = the database', () => {
  it('under concurrent writers (with a long transaction), snapshot totals plus the events after its cursor equal the final counts', async () => {
    const hub = await startTestHub(db.url);
    const viewer = await token({ sub: 'snap', elections: [e1] });
    let writing = true;
    let rounds = 0;
    const long = new pg.Client({ connectionString: db.url });
    await long.connect();
    await long.query('BEGIN');
    await long.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 100)`, [e1, c1]);
    const writers = [1, 2, 3].map(async (w) => {
      while (writing) {
        await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, $3)`, [e1, c1, w]);
        await db.pool.query(
          `UPDATE votes SET count = count + 1 WHERE id = (SELECT max(id) FROM votes WHERE election_id = $1)`,
          [e1],
        );
        await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
        await db.pool.query(
          `DELETE FROM guarantees WHERE id = (SELECT min(id) FROM guarantees WHERE election_id = $1 AND voter_name IS NULL)`,
          [e1],
        );
        rounds++;
      }
    });
    await waitUntil(() => rounds >= 15, 30_000, 'writes before the snapshot');
    const snap = (await (
      await fetch(`${hub.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${viewer}` } })
    ).json()) as {
      cursor: string;
      totals: { guarantees: number; votes: number };
    };
    const c = await connect(hub, { token: viewer, query: 'subscribe=none' });
    c.send({ type: 'subscribe', topics: [`election:${e1}`], since: snap.cursor });
    await c.next((f) => f.type === 'subscribed');
    const beforeCommit = rounds;
    await waitUntil(() => rounds >= beforeCommit + 15, 30_000, 'writes after the resume');
    await long.query('COMMIT');
    await long.end();
    const afterCommit = rounds;
    await waitUntil(() => rounds >= afterCommit + 15, 30_000, 'writes after the long transaction');
    writing = false;
    await Promise.all(writers);
    const q = await db.pool.query<{ g: string; v: string }>(
      `SELECT (SELECT count(*) FROM guarantees WHERE election_id = $1)::text g, (SELECT coalesce(sum(count), 0) FROM votes WHERE election_id = $1)::text v`,
      [e1],
    );
    const expected = { guarantees: Number(q.rows[0]?.g), votes: Number(q.rows[0]?.v) };
    const applied = { ...snap.totals };
    const oldCount = new Map<number, number>();
    await waitUntil(
      () => {
        applied.guarantees = snap.totals.guarantees;
        applied.votes = snap.totals.votes;
        oldCount.clear();
        for (const f of c.events()) {
          const d = f.data as { id: number; count?: number };
          if (f.type === 'guarantee_update')
            applied.guarantees += f.action === 'created' ? 1 : f.action === 'deleted' ? -1 : 0;
          if (f.type === 'voting_update') {
            // Events carry the new row only; the previous count is what we last saw for that row
            // (or, for rows older than the snapshot, the count of the update is +1 by construction).
            if (f.action === 'created') applied.votes += d.count ?? 0;
            else if (f.action === 'updated') applied.votes += 1;
            else if (f.action === 'deleted') applied.votes -= d.count ?? 0;
          }
        }
        return applied.guarantees === expected.guarantees && applied.votes === expected.votes;
      },
      10_000,
      `snapshot + events = database (${JSON.stringify(expected)})`,
    );
    await c.close();
    await hub.stop();
  }, 60_000);
});
