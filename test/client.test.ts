import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import WebSocket, { WebSocketServer } from 'ws';
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
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { MARKER, outboxHead, reached, readPast, startTestHub, token, waitUntil, when } from './support/hub.ts';

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

  }
  override send(data: string): void {
    this.sent.push(data);
    super.send(data);
  }
}
const WS: WebSocketConstructor = RecordingWebSocket;

/** The one socket currently open. */
const liveSocket = (): RecordingWebSocket => {
  const open = sockets.filter((s) => s.readyState === WebSocket.OPEN);
  expect(open.length).toBe(1);
  return open[0] as RecordingWebSocket;
};

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
    const guarantees: Array<{ action: string; committee: number | string | null; cursor: string }> = [];
    client.on('guarantee_update', (f) => guarantees.push({ action: f.action, committee: f.committee_id, cursor: f.cursor }));
    await waitUntil(() => client.state() === 'open', 10_000, 'open');
    expect(states[0]?.[0]).toBe('open');
    expect(client.topics().sort()).toEqual([`election:${e1}`, 'user:viewer-a']);
    expect(client.cursor()).toMatch(/^[0-9a-z]+\.[0-9a-z]+$/);
    // The token travelled as a subprotocol, not in the URL.
    const live = liveSocket();
    expect(live.url).not.toContain(jwt);
    expect(live.protocol).toBe(`bearer.${jwt}`);

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
    liveSocket().send(JSON.stringify({ type: 'ping' }));
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
    const beforeStop = states.length;
    await hub.stop(); // closes every socket with 1001
    await waitUntil(() => inserted.length >= 45, 10_000, 'rows while no hub runs');
    hub = await startHub();
    await writer;
    expect(writing).toBe(false);

    await waitUntil(() => createdIds(events).length >= inserted.length, 20_000, `${inserted.length} events (have ${events.length})`);
    expect(createdIds(events)).toEqual(inserted);
    expectStrictlyIncreasing(events);
    // (Usually with 1001; see the report on uWS closing fresh sockets, which may get there first.)
    expect(states.slice(beforeStop).some(([s]) => s === 'reconnecting')).toBe(true);
    expect(client.state()).toBe('open');
    // The resume point is the last event or a later position the hub confirmed (`subscribed`).
    expect(compareCursors(client.cursor() ?? '0.0', events.at(-1)?.cursor ?? '0.0')).toBeGreaterThanOrEqual(0);
    // Every reconnect resumed: subscribe=none and `since` = the last cursor.
    const live = liveSocket();
    expect(live).not.toBe(sockets[0]);
    expect(live.url).toContain('subscribe=none');
    const resume = JSON.parse(live.sent[0] ?? '{}') as { type?: string; since?: string; topics?: string[] };
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
      // Nothing extra trickles in: a marker published after the rows arrives after anything they caused.
      await writer.query(`SELECT hub.publish('user:viewer-c', '${MARKER}', '{}')`);
      await waitUntil(() => events.some((e) => e.type === MARKER), 10_000, 'the marker');
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
    const socket = liveSocket();
    await waitUntil(() => socket.sent.filter((f) => f.includes('"ping"')).length > 1, 5000, 'heartbeat pings');

    await client.close();
    expect(client.state()).toBe('closed');
    expect(socket.readyState).toBe(WebSocket.CLOSED);
    const seen = { states: states.length, sent: socket.sent.length, sockets: sockets.length };
    // About time, not an event: nothing happens during 15 heartbeat intervals after close().
    await new Promise((r) => setTimeout(r, 300));
    expect({ states: states.length, sent: socket.sent.length, sockets: sockets.length }).toEqual(seen);
    expect(states.at(-1)?.[0]).toBe('closed');
    await client.close(); // idempotent

    // Closing while it waits to reconnect (no hub) cancels the retry.
    const { client: waiting, states: waitingStates } = open({ url: 'ws://127.0.0.1:9/ws', token: jwt, backoff: { initialMs: 50, maxMs: 50 } });
    await waitUntil(() => waitingStates.some(([s]) => s === 'reconnecting'), 5000, 'reconnecting');
    await waiting.close();
    const n = { states: waitingStates.length, sockets: sockets.length };
    // About time, not an event: no retry during 6 backoff periods after close().
    await new Promise((r) => setTimeout(r, 300));
    expect({ states: waitingStates.length, sockets: sockets.length }).toEqual(n);
    expect(waiting.state()).toBe('closed');
    expect(sockets.every((s) => s.readyState === WebSocket.CLOSED)).toBe(true);
  });

  it('a token that expires (4001) is replaced through the token callback', async () => {
    const hub = await startHub();
    let expired = false;
    let fresh = 0;
    const { client, events, states } = open({
      url: wsUrl(hub),
      // Short-lived tokens until the hub has closed a connection with 4001, then long-lived ones.
      token: async () => (expired ? (fresh++, token({ sub: 'viewer-exp', elections: [e1], ttl: '1h' })) : token({ sub: 'viewer-exp', elections: [e1], ttl: '1s' })),
      topics: [`election:${e1}`],
    });
    client.onState((s, d) => {
      if (d.code === 4001) {
        expect(s).toBe('reconnecting');
        expired = true;
      }
    });
    await waitUntil(() => expired, 10_000, '4001');
    await waitUntil(() => client.state() === 'open', 10_000, 'reopened');
    expect(fresh).toBeGreaterThanOrEqual(1);
    expect(states.filter(([, d]) => d.code === 4001).length).toBe(1);
    const id = await insertGuarantee(db.pool);
    await waitUntil(() => createdIds(events).includes(id), 10_000, 'event after refresh');
  });

  it('snapshotAndSubscribe: totals follow dashboard_update, the feed holds exactly the events after the snapshot', async () => {
    const hub = await startHub();
    const before = [await insertGuarantee(db.pool), await insertGuarantee(db.pool, c2)];
    void before;
    // A snapshot counts rows only once the horizon has passed them (until then their events come
    // after its cursor); the hub having read them is that fact.
    await readPast(hub, db.pool);
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

  it('snapshotAndSubscribe: totals are right after a hub restart even when nothing is written afterwards', async () => {
    let hub = await startHub();
    let url = wsUrl(hub);
    const jwt = await token({ sub: 'dash-restart', elections: [e1] });
    const dash = await snapshotAndSubscribe({ url: () => url, token: jwt, electionId: e1, WebSocket: WS, backoff: { initialMs: 20, maxMs: 300 } });
    clients.push(dash);
    await waitUntil(() => dash.client.state() === 'open', 10_000, 'open');
    await hub.stop();
    // Written while no hub runs; after the restart nothing else is written.
    for (let i = 0; i < 5; i++) await insertGuarantee(db.pool);
    const expected = Number((await db.pool.query<{ n: string }>('SELECT count(*)::text AS n FROM guarantees WHERE election_id = $1', [e1])).rows[0]?.n);
    hub = await startHub();
    url = wsUrl(hub);
    await waitUntil(() => dash.snapshot().totals.guarantees === expected, 15_000, `totals ${expected} (have ${dash.snapshot().totals.guarantees})`);
  });
});

describe('resync', () => {
  it('snapshotAndSubscribe re-fetches the snapshot when the hub pruned past the resume cursor', async () => {
    let hub = await startHub();
    const jwt = await token({ sub: 'dash-resync', elections: [e1] });
    let reachable = true;
    const dash = await snapshotAndSubscribe({
      url: () => (reachable ? wsUrl(hub) : 'ws://127.0.0.1:9/ws'),
      httpUrl: () => hub.url,
      token: jwt,
      electionId: e1,
      WebSocket: WS,
      backoff: { initialMs: 20, maxMs: 200 },
    });
    clients.push(dash);
    const resyncs: unknown[] = [];
    dash.client.on('resync', (r) => resyncs.push(r));
    await waitUntil(() => dash.client.state() === 'open', 10_000, 'open');
    const before = dash.snapshot();

    // Away while rows are written, and the outbox is pruned (retention 1 ms) before it comes back.
    reachable = false;
    await hub.stop();
    for (let i = 0; i < 5; i++) await insertGuarantee(db.pool);
    const written = await outboxHead(db.pool);
    hub = await startTestHub(db.url, { OUTBOX_RETENTION: '1ms' });
    hubs.push(hub);
    const pruning = hub;
    await when(pruning, 'pruned', () => reached(pruning.prunedMark(), written), 'the hub to prune the rows written while away');
    reachable = true;

    const expected = Number((await db.pool.query<{ n: string }>('SELECT count(*)::text AS n FROM guarantees WHERE election_id = $1', [e1])).rows[0]?.n);
    await waitUntil(() => resyncs.length === 1, 10_000, 'resync');
    await waitUntil(() => dash.snapshot().totals.guarantees === expected, 10_000, `totals ${expected} (have ${dash.snapshot().totals.guarantees})`);
    expect(compareCursors(dash.snapshot().cursor, before.cursor)).toBe(1);
    expect(dash.client.state()).toBe('open');
  });
});

describe('against a scripted server', () => {
  let server: WebSocketServer | undefined;
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    for (const c of server?.clients ?? []) c.terminate();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });
  const listen = async (onConnection: (ws: WebSocket) => void) => {
    const s = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: (p) => [...p][0] ?? false });
    s.on('connection', onConnection);
    await new Promise((r) => s.on('listening', r));
    server = s;
    return `ws://127.0.0.1:${(s.address() as { port: number }).port}/ws`;
  };
  const hello = (ws: WebSocket) => ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: ['user:s'], cursor: '1.0' }));

  it('a connection that stops answering is declared dead by the heartbeat and replaced', async () => {
    let connections = 0;
    const url = await listen((ws) => {
      connections++;
      hello(ws); // and never a pong
    });
    const { client, states } = open({ url, token: 't', heartbeat: { intervalMs: 50, timeoutMs: 100 }, backoff: { initialMs: 10, maxMs: 10 } });
    await waitUntil(() => connections >= 2, 5000, 'second connection');
    expect(states.some(([s, d]) => s === 'reconnecting' && d.reason === 'heartbeat timeout')).toBe(true);
    await client.close();
  });

  it('1008 and 1009 are not retried in a hot loop; a flapping connection backs off', async () => {
    const opened: number[] = [];
    const url = await listen((ws) => {
      opened.push(Date.now());
      hello(ws);
      ws.close(opened.length === 1 ? 1008 : 1001, 'bye');
    });
    const { client, states } = open({ url, token: 't', backoff: { initialMs: 50, maxMs: 400 } });
    await waitUntil(() => opened.length >= 4, 10_000, 'four connections');
    await client.close();
    const retries = states.filter(([s]) => s === 'reconnecting').map(([, d]) => d);
    expect(retries[0]?.code).toBe(1008);
    expect(retries[0]?.retryInMs).toBeGreaterThanOrEqual(200);
    // Accepted-then-dropped connections do not reset the backoff: the cap keeps growing.
    expect(opened.length).toBeLessThan(10);
  });

  it('the auto-subscribed topics are resumed with subscribe=none and since after a drop', async () => {
    const received: Array<{ url: string; frames: unknown[] }> = [];
    const url = await listen((ws) => {
      const conn = { url: '', frames: [] as unknown[] };
      received.push(conn);
      ws.on('message', (d) => conn.frames.push(JSON.parse(d.toString())));
      if (received.length === 1) {
        hello(ws);
        ws.send(JSON.stringify({ type: 'app', topic: 'user:s', data: 1, cursor: '2.1', committed_at: new Date().toISOString() }));
        ws.send(JSON.stringify({ type: 'app', topic: 'user:s', data: 1, cursor: '2.1', committed_at: new Date().toISOString() })); // duplicate
        ws.send(JSON.stringify({ type: 'app', topic: 'user:s', data: 2, cursor: '2.2', committed_at: new Date().toISOString() }));
        setTimeout(() => ws.close(1001, 'restart'), 50);
      } else {
        ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: [], cursor: '3.0' }));
        // A replay overlapping what was delivered: only what is new gets through.
        ws.send(JSON.stringify({ type: 'app', topic: 'user:s', data: 2, cursor: '2.2', committed_at: new Date().toISOString() }));
        ws.send(JSON.stringify({ type: 'app', topic: 'user:s', data: 3, cursor: '2.3', committed_at: new Date().toISOString() }));
        ws.send(JSON.stringify({ type: 'subscribed', topics: ['user:s'], cursor: '3.0' }));
      }
    });
    const seenUrls: string[] = [];
    const { client, events } = open({ url: () => (seenUrls.push(url), url), token: 't' });
    await waitUntil(() => events.length >= 3, 5000, 'events');
    await waitUntil(() => received.length === 2 && received[1]?.frames.length === 1, 5000, 'resume frame');
    expect(events.map((e) => (e as { data: unknown }).data)).toEqual([1, 2, 3]);
    expect(received[1]?.frames[0]).toEqual({ type: 'subscribe', topics: ['user:s'], since: '2.2' });
    expect(sockets[0]?.url).not.toContain('subscribe=none');
    expect(sockets[1]?.url).toContain('subscribe=none');
    expect(seenUrls.length).toBe(2);
    await waitUntil(() => client.cursor() === '3.0', 5000, 'cursor from subscribed');
    await client.close();
  });
});

describe('browser bundle', () => {
  it('bundles with esbuild for the browser from the client alone (no zod, no node: modules)', async () => {
    const { build } = await import('esbuild');
    const r = await build({ entryPoints: ['client/index.ts'], bundle: true, write: false, platform: 'browser', format: 'esm', target: 'es2020', metafile: true, minify: true, logLevel: 'silent' });
    expect(Object.keys(r.metafile.inputs)).toEqual(['client/index.ts']);
    const text = r.outputFiles[0]?.text ?? '';
    expect(text).not.toMatch(/from\s*["']node:|require\(/);
    expect(text.length).toBeLessThan(20_000);
  });
});
