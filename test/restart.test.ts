// Keys without the flush (sql/012_async_keys_and_restarts.sql): a restart of PostgreSQL may take
// back keys a client already holds. The crash is simulated exactly as recovery leaves it: the
// sequencer's state and keys as one earlier call committed them (WAL replays a prefix of the
// calls), and the unlogged tables emptied (the end of crash recovery does that).
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FIRST_SEQ, decodeCursor, encodeCursor, lostRangeOf } from '../src/events/position.ts';
import { CloseCode } from '../src/errors.ts';
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  type Frame,
  type TestClient,
  connect,
  eventsReceived,
  startTestHub,
  token,
  waitUntil,
  when,
} from './support/hub.ts';

let db: TestDatabase;
let e1: number;
let c1: number;
const hubs: Hub[] = [];
const sockets: TestClient[] = [];

beforeAll(async () => {
  db = await createTestDatabase('hub_restart');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
});

afterEach(async () => {
  await Promise.all(sockets.splice(0).map((c) => c.close()));
  await Promise.all(hubs.splice(0).map((h) => h.stop()));
});

afterAll(async () => {
  await db?.drop();
});

type State = { last_seq: string; horizon: string; in_flight: string[] };

/** The sequencer's state as one call commits it (the call and the read in one transaction, under its lock). */
async function callAndKeep(): Promise<State> {
  const c = await db.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT hub.sequence()');
    const r = await c.query<State>('SELECT last_seq::text, horizon::text, in_flight::text[] FROM hub.commit_state');
    await c.query('COMMIT');
    return r.rows[0] as State;
  } finally {
    c.release();
  }
}

/** What crash recovery leaves: the state and keys of `kept`, and the unlogged tables empty. */
async function crashBackTo(kept: State): Promise<void> {
  const c = await db.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT pg_advisory_xact_lock(7340112009)');
    await c.query('DELETE FROM hub.commits WHERE seq > $1::bigint', [kept.last_seq]);
    await c.query(
      'UPDATE hub.commit_state SET last_seq = $1::bigint, horizon = $2::text::xid8, in_flight = $3::text[]::xid8[]',
      [kept.last_seq, kept.horizon, kept.in_flight],
    );
    // The end of crash recovery empties every unlogged table.
    await c.query('TRUNCATE hub.sequencer_run');
    await c.query('COMMIT');
  } finally {
    c.release();
  }
}

const write = (name: string, on: Pick<pg.Pool, 'query'> = db.pool) =>
  on.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [e1, c1, name]);
/** The writes keyed above `seq`, in key order: their names and keys. */
const keyedAbove = async (seq: string) =>
  (
    await db.pool.query<{ n: string; s: string }>(
      `SELECT o.data->>'voter_name' n, k.seq::text s FROM hub.commits k JOIN hub.outbox o USING (txid)
       WHERE k.seq > $1::bigint ORDER BY k.seq`,
      [seq],
    )
  ).rows;
const names = (frames: Frame[]) => frames.map((f) => (f.data as { voter_name?: string } | undefined)?.voter_name);
const lostRanges = async () =>
  (
    await db.pool.query<{ f: string; t: string }>(
      'SELECT from_seq::text f, to_seq::text t FROM hub.lost_keys ORDER BY 1',
    )
  ).rows;

describe('keys lost in a restart of PostgreSQL', () => {
  it('the first call after a crash recovery records the lost range and keys the transactions it named after it, in order', async () => {
    await write('before');
    const kept = await callAndKeep();
    await write('lost 1');
    await write('lost 2');
    await db.pool.query('SELECT hub.sequence()');
    expect((await keyedAbove(kept.last_seq)).map((r) => r.n)).toEqual(['lost 1', 'lost 2']);
    const before = await lostRanges();

    await crashBackTo(kept);
    await write('after');
    const frontier = BigInt((await db.pool.query<{ f: string }>('SELECT hub.sequence()::text f')).rows[0]?.f ?? '0');

    const L = BigInt(kept.last_seq) + 1n;
    const B = FIRST_SEQ + ((L - FIRST_SEQ) / 2n ** 32n + 1n) * 2n ** 32n;
    expect((await lostRanges()).slice(before.length)).toEqual([{ f: String(L), t: String(B) }]);
    const rekeyed = await keyedAbove(kept.last_seq);
    expect(rekeyed.map((r) => r.n)).toEqual(['lost 1', 'lost 2', 'after']);
    expect(rekeyed.map((r) => BigInt(r.s))).toEqual([B, B + 1n, B + 2n]);
    expect(frontier).toBe(B + 3n);
    // The old keys' positions are lost; those at its edges keep their meaning.
    const lost = [{ from: L, to: B }];
    expect(lostRangeOf({ seq: L - 1n, id: 99n }, lost)).toBeUndefined();
    expect(lostRangeOf({ seq: L, id: 0n }, lost)).toBeUndefined();
    expect(lostRangeOf({ seq: L, id: 1n }, lost)).toEqual(lost[0]);
    expect(lostRangeOf({ seq: L + 2n, id: 0n }, lost)).toEqual(lost[0]);
    expect(lostRangeOf({ seq: B, id: 0n }, lost)).toBeUndefined();
    // The server is known now: later calls open no other epoch.
    await write('later');
    await db.pool.query('SELECT hub.sequence()');
    expect(await lostRanges()).toHaveLength(before.length + 1);
  });

  it('crashes during concurrent writers, long and aborted transactions: every committed transaction ends with one key, none inside a lost range', async () => {
    const before = (await lostRanges()).length;
    let writing = true;
    const writer = async (k: number) => {
      const c = await db.pool.connect();
      try {
        for (let i = 0; writing; i++) {
          const kind = (k + i) % 5;
          await c.query('BEGIN');
          await write(`w${k}.${i}`, c);
          if (kind === 3) await c.query('SELECT pg_sleep(0.03)'); // long: in flight across calls and crashes
          if (kind === 4) await c.query('ROLLBACK');
          else await c.query('COMMIT');
        }
      } finally {
        c.release();
      }
    };
    const caller = async () => {
      while (writing) {
        await db.pool.query('SELECT hub.sequence()');
        await new Promise((r) => setTimeout(r, 2));
      }
    };
    const work = [0, 1, 2, 3].map((k) => writer(k)).concat([caller()]);
    const crashes = 6;
    for (let n = 0; n < crashes; n++) {
      const kept = await callAndKeep();
      await new Promise((r) => setTimeout(r, 30 + Math.random() * 120));
      await crashBackTo(kept);
      await new Promise((r) => setTimeout(r, 30));
    }
    writing = false;
    await Promise.all(work);
    await db.pool.query('SELECT hub.sequence()');
    await db.pool.query('SELECT hub.sequence()');

    const q = async (sql: string) => (await db.pool.query<{ n: number }>(sql)).rows[0]?.n;
    // Every transaction with rows (only committed ones have visible rows) has exactly one key...
    expect(
      await q(`SELECT count(*)::int AS n FROM (SELECT DISTINCT txid FROM hub.outbox) o
               WHERE NOT EXISTS (SELECT 1 FROM hub.commits k WHERE k.txid = o.txid)`),
    ).toBe(0);
    // ...none of them inside a range a crash took back...
    expect(
      await q(`SELECT count(*)::int AS n FROM hub.commits k JOIN hub.lost_keys l
               ON k.seq >= l.from_seq AND k.seq < l.to_seq`),
    ).toBe(0);
    // ...and each crash recorded one range.
    expect((await lostRanges()).length - before).toBe(crashes);
    // The aborted writes left nothing.
    expect(
      await q(`SELECT count(*)::int AS n FROM hub.outbox WHERE data->>'voter_name' ~ '^w[0-9]+[.]' AND
               ((substring(data->>'voter_name' from 'w([0-9]+)')::int + substring(data->>'voter_name' from '[.]([0-9]+)')::int) % 5) = 4`),
    ).toBe(0);
  }, 60_000);

  it('a hub that handed out lost keys closes its sockets with 4009; a lost cursor gets resync, one below the loss every event once, in order', async () => {
    const hub = await startTestHub(db.url);
    hubs.push(hub);
    const admin = await token({ sub: 'ops', role: 'admin' });
    const a = await connect(hub, { token: admin });
    sockets.push(a);
    await a.next((f) => f.type === 'connection_success');

    await write('r1');
    const [r1] = await eventsReceived(a, 1);
    const kept = await callAndKeep(); // r1's key is durable
    await write('r2');
    await write('r3');
    const got = await eventsReceived(a, 3);
    expect(names(got)).toEqual(['r1', 'r2', 'r3']);
    const lostCursor = got[2]?.cursor as string;

    await crashBackTo(kept);
    const restarted = when(hub, 'reader:restarted', (e) => e !== undefined, 'the reader to start again', 20_000);
    await write('r4'); // wakes the reader: its next page opens the epoch
    await restarted;
    expect((await a.closed).code).toBe(CloseCode.resumeFailed);
    const metrics = await (await fetch(`${hub.metricsUrl}/metrics`)).text();
    expect(metrics).toMatch(/^hub_reader_restarts_total 1$/m);
    expect(metrics).toMatch(/hub_connections_closed_total\{code="4009"\} 1/);
    // r2, r3 and r4 went out again under new keys: not to that socket.
    expect(names(a.events())).toEqual(['r1', 'r2', 'r3']);

    // A client resuming from a lost cursor takes a fresh snapshot.
    const b = await connect(hub, { token: admin, query: 'subscribe=none' });
    sockets.push(b);
    await b.next((f) => f.type === 'connection_success');
    b.send({ type: 'subscribe', topics: ['election:*'], since: lostCursor });
    expect((await b.next((f) => f.type === 'resync' || f.type === 'subscribed')).type).toBe('resync');

    // One resuming from below the loss gets what came after, once each, in the new keys' order.
    const c = await connect(hub, { token: admin, query: 'subscribe=none' });
    sockets.push(c);
    await c.next((f) => f.type === 'connection_success');
    c.send({ type: 'subscribe', topics: ['election:*'], since: r1?.cursor });
    const subscribed = await c.next((f) => f.type === 'resync' || f.type === 'subscribed');
    expect(subscribed.type).toBe('subscribed');
    const after = await eventsReceived(c, 3);
    expect(names(after)).toEqual(['r2', 'r3', 'r4']);
    const cursors = after.map((f) => decodeCursor(f.cursor));
    const [range] = (await lostRanges()).slice(-1);
    for (const p of cursors) expect(p && p.seq >= BigInt(range?.t ?? '0')).toBe(true);
    await write('r5');
    await waitUntil(() => c.events().length >= 4, 15_000, 'r5 live');
    expect(names(c.events())).toEqual(['r2', 'r3', 'r4', 'r5']);
    expect(c.events().map((f) => f.cursor)).toEqual([...new Set(c.events().map((f) => f.cursor))]);
    // The hub's own cursor moved past the loss.
    const d = await connect(hub, { token: admin });
    sockets.push(d);
    const hello = await d.next((f) => f.type === 'connection_success');
    expect(decodeCursor(hello.cursor)?.seq ?? 0n).toBeGreaterThanOrEqual(BigInt(range?.t ?? '0'));
    expect(encodeCursor({ seq: BigInt(range?.f ?? '0'), id: 0n })).not.toBe(lostCursor);
  }, 60_000);

  it('every node that read the lost keys starts again after them, and both deliver the new keys in one order', async () => {
    const [h1, h2] = await Promise.all([startTestHub(db.url), startTestHub(db.url)]);
    hubs.push(h1 as Hub, h2 as Hub);
    const admin = await token({ sub: 'ops', role: 'admin' });
    const live = await Promise.all([h1, h2].map((h) => connect(h as Hub, { token: admin })));
    sockets.push(...live);
    for (const c of live) await c.next((f) => f.type === 'connection_success');
    await write('n1');
    const [first] = await Promise.all(live.map((c) => eventsReceived(c, 1)));
    const kept = await callAndKeep();
    await write('n2');
    for (const c of live) await eventsReceived(c, 2);

    await crashBackTo(kept);
    const restarted = [h1, h2].map((h) =>
      when(h as Hub, 'reader:restarted', (e) => e !== undefined, 'each node to start again', 20_000),
    );
    await write('n3');
    await Promise.all(restarted);
    for (const c of live) expect((await c.closed).code).toBe(CloseCode.resumeFailed);

    const resumed = await Promise.all(
      [h1, h2].map(async (h) => {
        const c = await connect(h as Hub, { token: admin, query: 'subscribe=none' });
        sockets.push(c);
        await c.next((f) => f.type === 'connection_success');
        c.send({ type: 'subscribe', topics: ['election:*'], since: first?.[0]?.cursor });
        expect((await c.next((f) => f.type === 'resync' || f.type === 'subscribed')).type).toBe('subscribed');
        return eventsReceived(c, 2);
      }),
    );
    expect(resumed.map((frames) => names(frames))).toEqual([
      ['n2', 'n3'],
      ['n2', 'n3'],
    ]);
    expect(resumed[0]?.map((f) => f.cursor)).toEqual(resumed[1]?.map((f) => f.cursor));
  }, 60_000);
});
