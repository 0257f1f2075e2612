import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import pg from 'pg';
import WebSocket from 'ws';
import {
  type ClientState,
  type HubClient,
  type HubClientOptions,
  type HubEvent,
  type StateDetail,
  type WebSocketConstructor,
  compareCursors,
  createHubClient,
  snapshotAndSubscribe,
} from '../client/index.ts';
import { compare, encodeCursor } from '../src/db/cursor.ts';
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { capturedLogs, startTestHub, token, waitUntil } from './support/hub.ts';

let db: TestDatabase;
let e1: number;
let c1: number;
let c2: number;
const hubs: Hub[] = [];
const clients: Array<{ close(): Promise<void> }> = [];

/** `ws` through the standard WebSocket API, recording every socket the client creates. */
const sockets: WebSocket[] = [];
class RecordingWebSocket extends WebSocket {
  sent: string[] = [];
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    sockets.push(this);
    if (process.env.DBG) {
      const t0 = Date.now();
      this.on('close', (code, reason) => console.log('DBG ws close', Date.now() - t0, code, reason.toString(), this.sent));
      this.on('error', (err) => console.log('DBG ws error', Date.now() - t0, err));
      this.on('message', (d) => console.log('DBG ws msg', Date.now() - t0, d.toString().slice(0, 200)));
    }
  }
  override send(data: string): void {
    this.sent.push(data);
    super.send(data);
  }
}
const WS: WebSocketConstructor = RecordingWebSocket;

const startHub = async () => {
  const h = await startTestHub(db.url);
  hubs.push(h);
  return h;
};

const wsUrl = (h: Hub) => `ws://127.0.0.1:${h.port}/ws`;

type Recorded = { client: HubClient; events: HubEvent[]; states: Array<[ClientState, StateDetail]> };

const open = (opts: Omit<HubClientOptions, 'WebSocket'>): Recorded => {
  const client = createHubClient({ WebSocket: WS, backoff: { initialMs: 20, maxMs: 300 }, ...opts });
  clients.push(client);
  const events: HubEvent[] = [];
  const states: Array<[ClientState, StateDetail]> = [];
  client.onEvent((e) => events.push(e));
  client.onState((s, d) => states.push([s, d]));
  return { client, events, states };
};

const insertGuarantee = async (q: Pick<pg.Pool, 'query'>, committee = c1): Promise<number> => {
  const r = await q.query<{ id: number }>(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2) RETURNING id`, [e1, committee]);
  return Number(r.rows[0]?.id);
};

const createdIds = (events: HubEvent[]) =>
  events.filter((e) => e.type === 'guarantee_update' && 'action' in e && e.action === 'created').map((e) => Number((e as { id: unknown }).id));

const expectStrictlyIncreasing = (events: HubEvent[]) => {
  for (let i = 1; i < events.length; i++) {
    expect(compareCursors((events[i - 1] as HubEvent).cursor, (events[i] as HubEvent).cursor)).toBe(-1);
  }
};

beforeAll(async () => {
  db = await createTestDatabase('hub_client');
  const s = await seed(db.pool, 1, 2);
  e1 = s.elections[0] as number;
  [c1, c2] = s.committees.get(e1) as [number, number];
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(hubs.splice(0).map((h) => h.stop()));
  sockets.length = 0;
});

afterAll(async () => {
  await db?.drop();
});

describe('client SDK against a real hub', () => {
  it('(a) connects with the token as subprotocol, auto-subscribes and receives typed events live', async () => {
    const hub = await startHub();
    const jwt = await token({ sub: 'viewer-a', elections: [e1] });
    const { client, events, states } = open({ url: wsUrl(hub), token: async () => jwt });
    const guarantees: Array<{ action: string; committee: number | null; cursor: string }> = [];
    client.on('guarantee_update', (f) => guarantees.push({ action: f.action, committee: f.committee_id, cursor: f.cursor }));
    await waitUntil(() => client.state() === 'open', 10_000, 'open');
    expect(states.map(([s]) => s)).toEqual(['open']);
    expect(client.topics().sort()).toEqual([`election:${e1}`, 'user:viewer-a']);
    expect(client.cursor()).toMatch(/^[0-9a-z]+\.[0-9a-z]+$/);
    // The token travelled as a subprotocol, not in the URL.
    expect(sockets[0]?.url).not.toContain(jwt);
    expect(sockets[0]?.protocol).toBe(`bearer.${jwt}`);

    const id = await insertGuarantee(db.pool, c2);
    await waitUntil(() => events.length >= 1, 10_000, 'event');
    const e = events[0];
    expect(e?.type).toBe('guarantee_update');
    expect(e).toMatchObject({ action: 'created', election_id: e1, committee_id: c2, id });
    expect(guarantees).toEqual([{ action: 'created', committee: c2, cursor: e?.cursor }]);
    expect(client.cursor()).toBe(e?.cursor);

    // The heartbeat is answered: pong arrives for a ping.
    const pongs: unknown[] = [];
    client.on('pong', (p) => pongs.push(p));
    sockets[0]?.send(JSON.stringify({ type: 'ping' }));
    await waitUntil(() => pongs.length === 1, 5000, 'pong');
  });

  it('(b) survives a hub restart while rows are written: every row once, in cursor order', async () => {
    let hub = await startHub();
    const jwt = await token({ sub: 'viewer-b', elections: [e1] });
    const { client, events, states } = open({ url: () => wsUrl(hub), token: jwt, topics: [`election:${e1}`] });
    await waitUntil(() => client.state() === 'open', 10_000, 'open');

    const inserted: number[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; i < 90; i++) {
        inserted.push(await insertGuarantee(db.pool, i % 2 ? c1 : c2));
        await new Promise((r) => setTimeout(r, 5));
      }
      writing = false;
    })();
    await waitUntil(() => inserted.length >= 20, 10_000, 'first rows');
    await hub.stop(); // closes every socket with 1001
    await waitUntil(() => inserted.length >= 45, 10_000, 'rows while no hub runs');
    hub = await startHub();
    await writer;
    expect(writing).toBe(false);

    await waitUntil(() => createdIds(events).length >= inserted.length, 5_000, `${inserted.length} events (have ${events.length})`).catch((err) => {
      const got = new Set(createdIds(events));
      console.log('DBG missing', inserted.filter((i) => !got.has(i)), 'inserted', inserted.join(','));
      console.log('DBG events', events.map((e) => `${(e as {id:unknown}).id}@${e.cursor}`).join(' '));
      console.log('DBG sockets', sockets.map((s) => `${s.url} ${s.readyState} ${s.sent.join('|')}`).join('\n'));
      console.log('DBG states', JSON.stringify(states));
      throw err;
    });
    expect(createdIds(events)).toEqual(inserted);
    expectStrictlyIncreasing(events);
    expect(states.some(([s, d]) => s === 'reconnecting' && d.code === 1001)).toBe(true);
    expect(client.state()).toBe('open');
    expect(client.cursor()).toBe(events.at(-1)?.cursor);
    // Every reconnect resumed: subscribe=none and `since` = the last cursor.
    const later = sockets.slice(1).filter((s) => s.readyState === WebSocket.OPEN);
    expect(later.length).toBe(1);
    expect(later[0]?.url).toContain('subscribe=none');
    const resume = JSON.parse(later[0]?.sent[0] ?? '{}') as { type?: string; since?: string; topics?: string[] };
    expect(resume).toMatchObject({ type: 'subscribe', topics: [`election:${e1}`] });
    expect(typeof resume.since).toBe('string');
  });

  it('(c) pg_terminate_backend of every hub connection while 200 rows are written: all arrive once, in order', async () => {
    const hub = await startHub();
    const jwt = await token({ sub: 'viewer-c', elections: [e1] });
    const { client, events } = open({ url: wsUrl(hub), token: jwt });
    await waitUntil(() => client.state() === 'open', 10_000, 'open');

    const writer = new pg.Client({ connectionString: db.url });
    const killer = new pg.Pool({ connectionString: db.url, max: 1 });
    killer.on('error', () => undefined);
    await writer.connect();
    try {
      const writerPid = Number((await writer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid);
      const terminate = () =>
        killer.query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1`,
          [writerPid],
        );
      const inserted: number[] = [];
      let terminated = 0;
      for (let i = 0; i < 200; i++) {
        inserted.push(await insertGuarantee(writer, i % 2 ? c1 : c2));
        if (i % 40 === 20) terminated += (await terminate()).rowCount ?? 0;
      }
      expect(terminated).toBeGreaterThan(0);
      await waitUntil(() => createdIds(events).length >= 200, 30_000, `200 events (have ${events.length})`);
      await new Promise((r) => setTimeout(r, 200)); // nothing extra trickles in
      expect(createdIds(events)).toEqual(inserted);
      expectStrictlyIncreasing(events);
    } finally {
      await writer.end();
      await killer.end();
    }
  });

  it('(e) close() stops everything: socket closed, no further state changes, pings or reconnects', async () => {
    const hub = await startHub();
    const jwt = await token({ sub: 'viewer-e', elections: [e1] });
    const { client, states } = open({ url: wsUrl(hub), token: jwt, heartbeat: { intervalMs: 20, timeoutMs: 1000 } });
    await waitUntil(() => client.state() === 'open', 10_000, 'open');
    await new Promise((r) => setTimeout(r, 100));
    const socket = sockets[0] as RecordingWebSocket;
    expect(socket.sent.filter((f) => f.includes('"ping"')).length).toBeGreaterThan(1);

    await client.close();
    expect(client.state()).toBe('closed');
    expect(socket.readyState).toBe(WebSocket.CLOSED);
    const seen = { states: states.length, sent: socket.sent.length, sockets: sockets.length };
    await new Promise((r) => setTimeout(r, 300));
    expect({ states: states.length, sent: socket.sent.length, sockets: sockets.length }).toEqual(seen);
    expect(states.at(-1)?.[0]).toBe('closed');
    await client.close(); // idempotent

    // Closing while it waits to reconnect (no hub) cancels the retry.
    const { client: waiting, states: waitingStates } = open({ url: 'ws://127.0.0.1:9/ws', token: jwt, backoff: { initialMs: 50, maxMs: 50 } });
    await waitUntil(() => waitingStates.some(([s]) => s === 'reconnecting'), 5000, 'reconnecting');
    await waiting.close();
    const n = { states: waitingStates.length, sockets: sockets.length };
    await new Promise((r) => setTimeout(r, 300));
    expect({ states: waitingStates.length, sockets: sockets.length }).toEqual(n);
    expect(waiting.state()).toBe('closed');
    expect(sockets.every((s) => s.readyState === WebSocket.CLOSED)).toBe(true);
  });

  it('a token that expires (4001) is replaced through the token callback', async () => {
    const hub = await startHub();
    let calls = 0;
    const { client, events, states } = open({
      url: wsUrl(hub),
      token: async () => token({ sub: 'viewer-exp', elections: [e1], ttl: ++calls === 1 ? '1s' : '1h' }),
      topics: [`election:${e1}`],
    });
    await waitUntil(() => states.some(([s, d]) => s === 'reconnecting' && d.code === 4001), 5_000, '4001').catch((err) => {
      console.log('DBG states', JSON.stringify(states), calls);
      console.log('DBG logs', capturedLogs.slice(-30).join(''));
      throw err;
    });
    await waitUntil(() => client.state() === 'open', 10_000, 'reopened');
    expect(calls).toBe(2);
    const id = await insertGuarantee(db.pool);
    await waitUntil(() => createdIds(events).includes(id), 10_000, 'event after refresh');
  });

  it('snapshotAndSubscribe: totals follow dashboard_update, the feed holds exactly the events after the snapshot', async () => {
    const hub = await startHub();
    const before = [await insertGuarantee(db.pool), await insertGuarantee(db.pool, c2)];
    void before;
    const jwt = await token({ sub: 'dash', elections: [e1] });
    const dash = await snapshotAndSubscribe({ url: wsUrl(hub), token: jwt, electionId: e1, WebSocket: WS, backoff: { initialMs: 20, maxMs: 300 } });
    clients.push(dash);
    const feed: HubEvent[] = [];
    dash.onEvent((e) => feed.push(e));
    const count = async () => Number((await db.pool.query<{ n: string }>('SELECT count(*)::text AS n FROM guarantees WHERE election_id = $1', [e1])).rows[0]?.n);
    expect(dash.snapshot().totals.guarantees).toBe(await count());
    const first = dash.snapshot().cursor;

    await waitUntil(() => dash.client.state() === 'open', 10_000, 'open');
    const after: number[] = [];
    for (let i = 0; i < 5; i++) after.push(await insertGuarantee(db.pool, i % 2 ? c1 : c2));
    const expected = await count();
    await waitUntil(() => dash.snapshot().totals.guarantees === expected, 10_000, `totals ${expected} (have ${dash.snapshot().totals.guarantees})`);
    await waitUntil(() => feed.length >= 5, 10_000, 'feed');
    expect(createdIds(feed)).toEqual(after);
    expect(feed.every((e) => compareCursors(e.cursor, first) > 0)).toBe(true);
    expect(compareCursors(dash.snapshot().cursor, first)).toBeGreaterThan(0);
    const perCommittee = dash.snapshot().committees.reduce((n, c) => n + c.guarantees, 0);
    expect(perCommittee).toBe(expected);
  });
});

describe('compareCursors', () => {
  it('(d) orders (txid, id) numerically, not as text', () => {
    expect(compareCursors('1.0', '1.0')).toBe(0);
    expect(compareCursors('1.0', '1.1')).toBe(-1);
    expect(compareCursors('1.z', '2.0')).toBe(-1);
    expect(compareCursors('z.0', '10.0')).toBe(-1); // 35 < 36
    expect(compareCursors('9.0', 'a.0')).toBe(-1); // 9 < 10
    expect(compareCursors('2.10', '2.9')).toBe(1);
    expect(compareCursors('00a.1', 'a.01')).toBe(0); // leading zeros do not count
    expect(compareCursors('zzzzzzzzzzzzz.1', '1000000000000.0')).toBe(1);
    expect(compareCursors('A.1', 'a.1')).toBe(0);
    expect(() => compareCursors('1.0', 'nope')).toThrow(TypeError);
    expect(() => compareCursors('', '1.0')).toThrow(TypeError);
  });

  it('(d) agrees with the server order for any positions, beyond 2^53', () => {
    const pos = fc.record({ txid: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), id: fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }) });
    fc.assert(
      fc.property(pos, pos, (a, b) => {
        expect(compareCursors(encodeCursor(a), encodeCursor(b))).toBe(Math.sign(compare(a, b)));
      }),
      { numRuns: 2000 },
    );
    // Adjacent values that a double could not tell apart.
    const big = 2n ** 60n;
    expect(compareCursors(encodeCursor({ txid: big, id: 0n }), encodeCursor({ txid: big + 1n, id: 0n }))).toBe(-1);
  });
});
