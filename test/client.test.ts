import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import WebSocket, { WebSocketServer } from 'ws';
import {
  type ClientState,
  type DashboardChange,
  type DashboardFrame,
  type DashboardSnapshot,
  type HubClient,
  type HubClientOptions,
  type HubEvent,
  type StateDetail,
  type WebSocketConstructor,
  compareCursors,
  createDashboardChain,
  createHubClient,
  snapshotAndSubscribe,
} from '../client/index.ts';
import fc from 'fast-check';
import { encodeCursor } from '../src/events/position.ts';
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
  const r = await q.query<{ id: number }>(
    `INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2) RETURNING id`,
    [e1, committee],
  );
  return Number(r.rows[0]?.id);
};

const createdIds = (events: HubEvent[]) =>
  events
    .filter((e) => e.type === 'guarantee_update' && 'action' in e && e.action === 'created')
    .map((e) => Number((e as { id: unknown }).id));

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
    client.on('guarantee_update', (f) =>
      guarantees.push({ action: f.action, committee: f.committee_id, cursor: f.cursor }),
    );
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

    await waitUntil(
      () => createdIds(events).length >= inserted.length,
      20_000,
      `${inserted.length} events (have ${events.length})`,
    );
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
    const { client: waiting, states: waitingStates } = open({
      url: 'ws://127.0.0.1:9/ws',
      token: jwt,
      backoff: { initialMs: 50, maxMs: 50 },
    });
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
      token: async () =>
        expired
          ? (fresh++, token({ sub: 'viewer-exp', elections: [e1], ttl: '1h' }))
          : token({ sub: 'viewer-exp', elections: [e1], ttl: '1s' }),
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

  const countOf = async (table: 'guarantees' | 'attendance') =>
    Number(
      (await db.pool.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${table} WHERE election_id = $1`, [e1]))
        .rows[0]?.n,
    );

  it('snapshotAndSubscribe: the full state comes over the socket (no HTTP request), deltas chain on it, the feed has the rows', async () => {
    const hub = await startHub();
    await insertGuarantee(db.pool);
    await insertGuarantee(db.pool, c2);
    // A snapshot counts rows only once the hub has read them (until then their events come after
    // its cursor): wait for that fact.
    await readPast(hub, db.pool);
    const jwt = await token({ sub: 'dash', elections: [e1] });
    const fetches: string[] = [];
    const dash = await snapshotAndSubscribe({
      url: wsUrl(hub),
      token: jwt,
      electionId: e1,
      WebSocket: WS,
      backoff: { initialMs: 20, maxMs: 300 },
      fetch: (input, init) => (fetches.push(String(input)), fetch(input, init)),
    });
    clients.push(dash);
    const changes: DashboardChange[] = [];
    dash.onSnapshot((_s, change) => changes.push(change));
    const feed: HubEvent[] = [];
    dash.onEvent((e) => feed.push(e));
    const first = dash.snapshot().cursor;
    await waitUntil(
      async () => dash.snapshot().totals.guarantees === (await countOf('guarantees')),
      10_000,
      'the state to count the rows written before',
    );
    expect(fetches).toEqual([]); // the state came as the first dashboard_update (base null)

    const after: number[] = [];
    for (let i = 0; i < 5; i++) after.push(await insertGuarantee(db.pool, i % 2 ? c1 : c2));
    const expected = await countOf('guarantees');
    await waitUntil(
      () => dash.snapshot().totals.guarantees === expected,
      10_000,
      `totals ${expected} (have ${dash.snapshot().totals.guarantees})`,
    );
    await waitUntil(() => createdIds(feed).length >= 5, 10_000, 'feed');
    expect(createdIds(feed)).toEqual(after);
    expect(compareCursors(dash.snapshot().cursor, first)).toBeGreaterThan(0);
    expect(dash.snapshot().committees.reduce((n, c) => n + c.guarantees, 0)).toBe(expected);
    // Deltas, each listing only the committees that changed.
    const deltas = changes.filter((c): c is Extract<DashboardChange, { full: false }> => !c.full);
    expect(deltas.length).toBeGreaterThan(0);
    for (const d of deltas) expect(d.committees.every((c) => c === c1 || c === c2)).toBe(true);
    expect(fetches).toEqual([]);
  });

  it('snapshotAndSubscribe totalsOnly: dashboard:{id} brings the totals and no row events', async () => {
    const hub = await startHub();
    const jwt = await token({ sub: 'dash-totals', elections: [e1] });
    const dash = await snapshotAndSubscribe({
      url: wsUrl(hub),
      token: jwt,
      electionId: e1,
      totalsOnly: true,
      WebSocket: WS,
      backoff: { initialMs: 20, maxMs: 300 },
    });
    clients.push(dash);
    const feed: HubEvent[] = [];
    dash.onEvent((e) => feed.push(e));
    expect(dash.client.topics()).toEqual([`dashboard:${e1}`]);
    for (let i = 0; i < 3; i++) await insertGuarantee(db.pool);
    const expected = await countOf('guarantees');
    await waitUntil(
      () => dash.snapshot().totals.guarantees === expected,
      10_000,
      `totals ${expected} (have ${dash.snapshot().totals.guarantees})`,
    );
    expect(feed).toEqual([]);
    const frames = sockets.flatMap((sk) => (sk as RecordingWebSocket).sent);
    expect(frames.some((f) => f.includes(`"dashboard:${e1}"`))).toBe(true);
  });

  it('snapshotAndSubscribe: a token that may not see the election is refused (the promise rejects)', async () => {
    const hub = await startHub();
    const jwt = await token({ sub: 'dash-other', elections: [e1 + 1000] });
    await expect(
      snapshotAndSubscribe({
        url: wsUrl(hub),
        token: jwt,
        electionId: e1,
        WebSocket: WS,
        backoff: { initialMs: 20, maxMs: 300 },
      }),
    ).rejects.toThrow(/forbidden_topic/);
  });

  it('snapshotAndSubscribe: totals are right after a hub restart even when nothing is written afterwards', async () => {
    let hub = await startHub();
    let url = wsUrl(hub);
    const jwt = await token({ sub: 'dash-restart', elections: [e1] });
    const dash = await snapshotAndSubscribe({
      url: () => url,
      token: jwt,
      electionId: e1,
      WebSocket: WS,
      backoff: { initialMs: 20, maxMs: 300 },
    });
    clients.push(dash);
    await waitUntil(() => dash.client.state() === 'open', 10_000, 'open');
    await hub.stop();
    // Written while no hub runs; after the restart nothing else is written.
    for (let i = 0; i < 5; i++) await insertGuarantee(db.pool);
    const expected = await countOf('guarantees');
    hub = await startHub();
    url = wsUrl(hub);
    await waitUntil(
      () => dash.snapshot().totals.guarantees === expected,
      15_000,
      `totals ${expected} (have ${dash.snapshot().totals.guarantees})`,
    );
  });
});

describe('resync', () => {
  it('snapshotAndSubscribe after the hub pruned past the resume cursor: resync, and the full state that follows is right', async () => {
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
    await when(
      pruning,
      'pruned',
      () => reached(pruning.prunedMark(), written),
      'the hub to prune the rows written while away',
    );
    reachable = true;

    const expected = Number(
      (await db.pool.query<{ n: string }>('SELECT count(*)::text AS n FROM guarantees WHERE election_id = $1', [e1]))
        .rows[0]?.n,
    );
    await waitUntil(() => resyncs.length === 1, 10_000, 'resync');
    await waitUntil(
      () => dash.snapshot().totals.guarantees === expected,
      10_000,
      `totals ${expected} (have ${dash.snapshot().totals.guarantees})`,
    );
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
  const hello = (ws: WebSocket) =>
    ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: ['user:s'], cursor: '1.0' }));

  it('a connection that stops answering is declared dead by the heartbeat and replaced', async () => {
    let connections = 0;
    const url = await listen((ws) => {
      connections++;
      hello(ws); // and never a pong
    });
    const { client, states } = open({
      url,
      token: 't',
      heartbeat: { intervalMs: 50, timeoutMs: 100 },
      backoff: { initialMs: 10, maxMs: 10 },
    });
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
        ws.send(
          JSON.stringify({
            type: 'app',
            topic: 'user:s',
            data: 1,
            cursor: '2.1',
            committed_at: new Date().toISOString(),
          }),
        );
        ws.send(
          JSON.stringify({
            type: 'app',
            topic: 'user:s',
            data: 1,
            cursor: '2.1',
            committed_at: new Date().toISOString(),
          }),
        ); // duplicate
        ws.send(
          JSON.stringify({
            type: 'app',
            topic: 'user:s',
            data: 2,
            cursor: '2.2',
            committed_at: new Date().toISOString(),
          }),
        );
        setTimeout(() => ws.close(1001, 'restart'), 50);
      } else {
        ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: [], cursor: '3.0' }));
        // A replay overlapping what was delivered: only what is new gets through.
        ws.send(
          JSON.stringify({
            type: 'app',
            topic: 'user:s',
            data: 2,
            cursor: '2.2',
            committed_at: new Date().toISOString(),
          }),
        );
        ws.send(
          JSON.stringify({
            type: 'app',
            topic: 'user:s',
            data: 3,
            cursor: '2.3',
            committed_at: new Date().toISOString(),
          }),
        );
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
    const r = await build({
      entryPoints: ['client/index.ts'],
      bundle: true,
      write: false,
      platform: 'browser',
      format: 'esm',
      target: 'es2020',
      metafile: true,
      minify: true,
      logLevel: 'silent',
    });
    expect(Object.keys(r.metafile.inputs)).toEqual(['client/index.ts']);
    const text = r.outputFiles[0]?.text ?? '';
    expect(text).not.toMatch(/from\s*["']node:|require\(/);
    expect(text.length).toBeLessThan(20_000);
  });
});

// ---- dashboards: the chain rule -------------------------------------------------------------

type C = { committee_id: number; guarantees: number; attendance: number; votes: number };
const counts = (id: number, g: number, a = 0, v = 0): C => ({
  committee_id: id,
  guarantees: g,
  attendance: a,
  votes: v,
});
const sum = (cs: C[]) =>
  cs.reduce(
    (t, c) => ({
      guarantees: t.guarantees + c.guarantees,
      attendance: t.attendance + c.attendance,
      votes: t.votes + c.votes,
    }),
    { guarantees: 0, attendance: 0, votes: 0 },
  );
const frameOf = (cursor: string, base: string | null, committees: C[], all: C[], election = 1): DashboardFrame => ({
  type: 'dashboard_update',
  election_id: election,
  cursor,
  base,
  totals: sum(all),
  committees,
});

describe('createDashboardChain', () => {
  it('base null replaces; a delta whose base is the last applied cursor overwrites only the listed committees', () => {
    const chain = createDashboardChain(1);
    expect(chain.current()).toBeUndefined();
    const all = [counts(1, 10), counts(2, 20), counts(3, 30)];
    expect(chain.update(frameOf('1.a', null, all, all))).toEqual({ kind: 'replaced' });
    expect(chain.chain()).toBe('1.a');
    const next = [counts(1, 10), counts(2, 25), counts(3, 30)];
    expect(chain.update(frameOf('1.b', '1.a', [counts(2, 25)], next))).toEqual({ kind: 'applied', committees: [2] });
    expect(chain.current()).toEqual({ election_id: 1, cursor: '1.b', totals: sum(next), committees: next });
    // A committee that appears in a delta takes its place in id order.
    const grown = [...next, counts(4, 1)];
    const withNew = [counts(0, 7), ...grown];
    expect(chain.update(frameOf('1.c', '1.b', [counts(4, 1), counts(0, 7)], withNew)).kind).toBe('applied');
    expect(chain.current()?.committees.map((c) => c.committee_id)).toEqual([0, 1, 2, 3, 4]);
    // A full state replaces everything, even committees that are gone from it.
    expect(chain.update(frameOf('1.d', null, [counts(9, 1)], [counts(9, 1)])).kind).toBe('replaced');
    expect(chain.current()?.committees).toEqual([counts(9, 1)]);
  });

  it('anything else is a broken chain: an unknown base, a delta before any state, a delta after a restart', () => {
    const chain = createDashboardChain(1);
    const all = [counts(1, 1)];
    expect(chain.update(frameOf('1.b', '1.a', all, all)).kind).toBe('broken'); // no state yet
    chain.update(frameOf('1.a', null, all, all));
    expect(chain.update(frameOf('1.c', '1.b', all, all)).kind).toBe('broken'); // missed 1.b
    expect(chain.current()?.cursor).toBe('1.a'); // a broken delta changes nothing
    chain.restart(); // a new connection: only its first full state starts a chain
    expect(chain.update(frameOf('1.b', '1.a', all, all)).kind).toBe('broken');
    expect(chain.update(frameOf('1.b', null, all, all)).kind).toBe('replaced');
  });

  it("another election's updates are ignored; ids compare as text (2^53 and beyond travel as strings)", () => {
    const big = createDashboardChain('9007199254740993');
    const all = [counts(1, 1)];
    expect(big.update(frameOf('1.a', null, all, all, 1)).kind).toBe('ignored');
    expect(big.update({ ...frameOf('1.a', null, all, all), election_id: '9007199254740993' }).kind).toBe('replaced');
    const n = createDashboardChain(7);
    expect(n.update({ ...frameOf('1.a', null, all, all), election_id: '7' }).kind).toBe('replaced');
  });

  it('an update without base (a hub older than the delta protocol) is a full state', () => {
    const chain = createDashboardChain(1);
    const all = [counts(1, 1)];
    const { base: _b, ...old } = frameOf('1.a', null, all, all);
    expect(chain.update(old).kind).toBe('replaced');
  });

  it('a fetched snapshot is taken unless older than the state held; deltas chain again only from the next full state', () => {
    const chain = createDashboardChain(1);
    const all = [counts(1, 1), counts(2, 2)];
    chain.update(frameOf('2.a', null, all, all));
    const snap = (cursor: string, cs: C[]): DashboardSnapshot => ({
      election_id: 1,
      cursor,
      totals: sum(cs),
      committees: cs,
    });
    expect(chain.snapshot(snap('1.z', [counts(1, 0)]))).toBe(false); // older: kept what it has
    expect(chain.current()?.cursor).toBe('2.a');
    expect(chain.snapshot(snap('2.c', [counts(1, 5), counts(2, 2)]))).toBe(true);
    expect(chain.current()?.totals.guarantees).toBe(7);
    expect(chain.chain()).toBeUndefined();
    // The hub's next delta chains on its previous update, not on the snapshot: broken, so the
    // client repairs (resubscribes) and the full state that answers starts the chain again.
    expect(chain.update(frameOf('2.d', '2.a', [counts(1, 6)], [counts(1, 6), counts(2, 2)])).kind).toBe('broken');
    expect(chain.update(frameOf('2.d', null, [counts(1, 6), counts(2, 2)], [counts(1, 6), counts(2, 2)])).kind).toBe(
      'replaced',
    );
  });

  it('property: a client applying the frames by the rule ends equal to the hub state; a lost update always breaks the chain', () => {
    // The hub's side, as the contract describes it: a full state, then deltas listing the
    // committees whose numbers changed since the previous update (absolute numbers).
    const step = fc.array(fc.tuple(fc.integer({ min: 1, max: 8 }), fc.integer({ min: -3, max: 5 })), {
      minLength: 0,
      maxLength: 6,
    });
    fc.assert(
      fc.property(
        fc.array(step, { minLength: 1, maxLength: 30 }),
        fc.option(fc.integer({ min: 1, max: 29 }), { nil: undefined }),
        (steps, lose) => {
          const state = new Map<number, C>();
          const frames: DashboardFrame[] = [];
          let prev: string | null = null;
          steps.forEach((changes, i) => {
            const before = new Map([...state].map(([k, v]) => [k, { ...v }]));
            for (const [id, d] of changes) {
              const c = state.get(id) ?? counts(id, 0);
              state.set(id, { ...c, guarantees: Math.max(0, c.guarantees + d), votes: c.votes + (d > 0 ? d : 0) });
            }
            const all = [...state.values()].sort((a, b) => a.committee_id - b.committee_id);
            const changed = all.filter((c) => JSON.stringify(before.get(c.committee_id)) !== JSON.stringify(c));
            const cursor = encodeCursor({ seq: BigInt(i + 1), id: 0n });
            frames.push(frameOf(cursor, prev, prev === null ? all : changed, all));
            prev = cursor;
          });
          const chain = createDashboardChain(1);
          const kinds = frames.filter((_, i) => i !== lose).map((f) => chain.update(f).kind);
          if (lose === undefined || lose >= frames.length) {
            expect(kinds.every((k) => k !== 'broken')).toBe(true);
            const want = [...state.values()].sort((a, b) => a.committee_id - b.committee_id);
            expect(chain.current()?.committees).toEqual(want);
            expect(chain.current()?.totals).toEqual(sum(want));
          } else if (lose < frames.length - 1) {
            // The frame after the lost one does not chain, nor does any later one.
            expect(kinds.slice(lose)).toEqual(Array(frames.length - 1 - lose).fill('broken'));
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('snapshotAndSubscribe against a scripted server', () => {
  let server: WebSocketServer | undefined;
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    for (const c of server?.clients ?? []) c.terminate();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });

  type Conn = { ws: WebSocket; frames: Array<{ type: string; topics?: string[]; since?: string }> };
  const listen = async (onSubscribe: (conn: Conn, topics: string[], n: number) => void) => {
    const conns: Conn[] = [];
    const s = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: (p) => [...p][0] ?? false });
    s.on('connection', (ws) => {
      const conn: Conn = { ws, frames: [] };
      conns.push(conn);
      let n = 0;
      ws.on('message', (d) => {
        const f = JSON.parse(d.toString()) as Conn['frames'][number];
        conn.frames.push(f);
        if (f.type === 'subscribe') {
          ws.send(JSON.stringify({ type: 'subscribed', topics: f.topics, cursor: '5.0' }));
          onSubscribe(conn, f.topics ?? [], n++);
        }
      });
      ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: [], cursor: '5.0' }));
    });
    await new Promise((r) => s.on('listening', r));
    server = s;
    return { url: `ws://127.0.0.1:${(s.address() as { port: number }).port}/ws`, conns };
  };
  const send = (conn: Conn, f: DashboardFrame) => conn.ws.send(JSON.stringify(f));
  const A = [counts(1, 10), counts(2, 20)];
  const noFetch: typeof fetch = () => Promise.reject(new Error('no HTTP expected'));

  it('resolves with the first full state, applies deltas, and tells which committees changed', async () => {
    const { url } = await listen((conn) => {
      send(conn, frameOf('6.0', null, A, A));
      setTimeout(() => send(conn, frameOf('6.1', '6.0', [counts(2, 21)], [counts(1, 10), counts(2, 21)])), 100);
    });
    const dash = await snapshotAndSubscribe({ url, token: 't', electionId: 1, WebSocket: WS, fetch: noFetch });
    clients.push(dash);
    const changes: DashboardChange[] = [];
    dash.onSnapshot((_s, c) => changes.push(c));
    await waitUntil(() => dash.snapshot().cursor === '6.1', 5000, 'the delta');
    expect(dash.snapshot().committees).toEqual([counts(1, 10), counts(2, 21)]);
    expect(dash.snapshot().totals.guarantees).toBe(31);
    expect(changes).toEqual([{ full: false, committees: [2] }]);
  });

  it('a broken chain: the topic is subscribed again and the snapshot fetched; the full state that follows starts the chain again', async () => {
    let fetched = 0;
    const fakeFetch: typeof fetch = async () => {
      fetched++;
      return new Response(
        JSON.stringify({
          election_id: 1,
          cursor: '6.5',
          totals: sum([counts(1, 11), counts(2, 22)]),
          committees: [counts(1, 11), counts(2, 22)],
        }),
        { status: 200 },
      );
    };
    const { url, conns } = await listen((conn, _topics, n) => {
      if (n === 0) {
        send(conn, frameOf('6.0', null, A, A));
        send(conn, frameOf('6.2', '6.1', [counts(1, 11)], [counts(1, 11), counts(2, 20)])); // 6.1 never came
      } else {
        // The answer to the resubscription: a full state, then a delta on it.
        setTimeout(() => {
          send(conn, frameOf('6.6', null, [counts(1, 12), counts(2, 22)], [counts(1, 12), counts(2, 22)]));
          send(conn, frameOf('6.7', '6.6', [counts(2, 23)], [counts(1, 12), counts(2, 23)]));
        }, 100);
      }
    });
    const dash = await snapshotAndSubscribe({
      url,
      token: 't',
      electionId: 1,
      WebSocket: WS,
      fetch: fakeFetch,
      httpUrl: 'http://127.0.0.1:9',
    });
    clients.push(dash);
    await waitUntil(() => dash.snapshot().cursor === '6.7', 5000, `the repaired chain (at ${dash.snapshot().cursor})`);
    expect(dash.snapshot().committees).toEqual([counts(1, 12), counts(2, 23)]);
    const subs = conns[0]?.frames.filter((f) => f.type === 'subscribe') ?? [];
    expect(subs.map((f) => f.topics)).toEqual([['election:1'], ['election:1']]);
    expect(subs[1]?.since).toBeUndefined();
    expect(fetched).toBe(1);
  });

  it('after a reconnect the new connection resumes from the cursor and its full state replaces the old one', async () => {
    const { url, conns } = await listen((conn) => {
      if (conns.length === 1) {
        send(conn, frameOf('6.0', null, A, A));
        setTimeout(() => conn.ws.close(1001, 'restart'), 50);
      } else {
        send(conn, frameOf('7.0', null, [counts(1, 50), counts(2, 60)], [counts(1, 50), counts(2, 60)]));
      }
    });
    const dash = await snapshotAndSubscribe({
      url,
      token: 't',
      electionId: 1,
      WebSocket: WS,
      fetch: noFetch,
      backoff: { initialMs: 10, maxMs: 50 },
    });
    clients.push(dash);
    await waitUntil(() => dash.snapshot().cursor === '7.0', 5000, 'the state of the second connection');
    expect(dash.snapshot().totals.guarantees).toBe(110);
    expect(conns[1]?.frames.find((f) => f.type === 'subscribe')).toMatchObject({
      topics: ['election:1'],
      since: expect.any(String),
    });
  });

  it('no full state in time: GET /dashboard/{id} is asked; a 404 rejects', async () => {
    const { url } = await listen(() => undefined);
    const missing: typeof fetch = async () => new Response('{"error":"not_found"}', { status: 404 });
    await expect(
      snapshotAndSubscribe({
        url,
        token: 't',
        electionId: 1,
        WebSocket: WS,
        fetch: missing,
        httpUrl: 'http://127.0.0.1:9',
        firstStateTimeoutMs: 100,
      }),
    ).rejects.toMatchObject({ status: 404 });
    const ok: typeof fetch = async () =>
      new Response(JSON.stringify({ election_id: 1, cursor: '6.0', totals: sum(A), committees: A }), { status: 200 });
    const dash = await snapshotAndSubscribe({
      url,
      token: 't',
      electionId: 1,
      WebSocket: WS,
      fetch: ok,
      httpUrl: 'http://127.0.0.1:9',
      firstStateTimeoutMs: 100,
    });
    clients.push(dash);
    expect(dash.snapshot().totals.guarantees).toBe(30);
  });
});
