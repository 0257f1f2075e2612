// Faults found by an outside attack pass (issue 15, items 1 and 8): a resume whose database
// read fails must never leave a silent gap, readiness must say when the hub cannot read, and
// token policy (exp required, long exp, topic cap on auto-subscribe) must hold.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import pg from 'pg';
import WebSocket, { WebSocketServer } from 'ws';
import { SignJWT } from 'jose';
import { type ClientState, type HubClient, type HubEvent, type StateDetail, createHubClient } from '../client/index.ts';
import { type Position, decodeCursor, encodeCursor } from '../src/events/position.ts';
import { armExpiry } from '../src/hub/session.ts';
import { readiness } from '../src/http/routes.ts';
import { CloseCode } from '../src/errors.ts';
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  SECRET,
  connect,
  headCursor,
  sequenced,
  startTestHub,
  token,
  upgradeStatus,
  waitUntil,
} from './support/hub.ts';

let db: TestDatabase;
let root: pg.Client;
let name: string;
let e1: number;
let c1: number;
const hubs: Hub[] = [];
const clients: HubClient[] = [];

beforeAll(async () => {
  db = await createTestDatabase('hub_faults');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
  name = new URL(db.url).pathname.slice(1);
  root = new pg.Client({ connectionString: db.url.replace(`/${name}`, '/postgres') });
  await root.connect();
});

afterEach(async () => {
  await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(hubs.splice(0).map((h) => h.stop()));
});

afterAll(async () => {
  await root?.end();
  await db?.drop();
});

const startHub = async (env: Record<string, string> = {}) => {
  const h = await startTestHub(db.url, env);
  hubs.push(h);
  return h;
};

/**
 * A cursor from "now": the last outbox row written so far. (Not the horizon: another test
 * file's open transaction can hold it below rows this file wrote earlier.)
 */
const nowCursor = () => headCursor(db.pool);

/** Ring of 100 events: the 3 000 rows stay out of memory even if a held horizon made the hub read them live. */
const SMALL_RING = { REPLAY_BUFFER_EVENTS: '100' };

/** The outbox's cursors after `since`, in the one global order. */
const outboxAfter = async (since: string): Promise<string[]> => {
  const p = decodeCursor(since) as Position;
  await sequenced(db.pool);
  const r = await db.pool.query<{ t: string; i: string }>(
    `SELECT seq::text AS t, id::text AS i FROM hub.outbox_in_order WHERE (seq, id) > ($1::bigint, $2::bigint) ORDER BY seq, id`,
    [p.seq.toString(), p.id.toString()],
  );
  return r.rows.map((row) => encodeCursor({ seq: BigInt(row.t), id: BigInt(row.i) }));
};

const write = (rows: number) =>
  db.pool.query(`INSERT INTO guarantees (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, $3::int)`, [
    e1,
    c1,
    rows,
  ]);

/** Refuses new connections and terminates the hub's (pool, listener) backends. */
const lockOut = async () => {
  await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
  await root.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'election-hub%'`,
    [name],
  );
};
const letIn = () => root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);

describe('a resume whose PostgreSQL read fails', () => {
  it('closes the socket with 4009 instead of going live over the gap (issue scenario: 3 000 rows, fresh hub, database refusing)', async () => {
    const since = await nowCursor();
    for (let i = 0; i < 3; i++) await write(1000);
    const hub = await startHub(SMALL_RING); // its ring starts at the head: the replay must come from PostgreSQL
    const c = await connect(hub, { token: await token({ sub: 'ops', role: 'admin' }), query: 'subscribe=none' });
    await c.next((f) => f.type === 'connection_success');
    await lockOut();
    c.send({ type: 'subscribe', topics: ['election:*'], since });
    const outcome = await Promise.race([
      c
        .next((f) => f.type === 'subscribed' || f.type === 'error', 20_000)
        .then(
          (f) => ({ frame: f.type, code: f.code }),
          () => ({ frame: 'none' }),
        ),
      c.closed.then((x) => ({ closed: x.code, reason: x.reason })),
    ]);
    await letIn();
    await write(5);
    expect(outcome).toEqual({ closed: CloseCode.resumeFailed, reason: 'resume failed: reconnect and resume' });
    // Nothing after the gap ever reached that socket.
    expect(c.events()).toEqual([]);
    expect(await (await fetch(`${hub.metricsUrl}/metrics`)).text()).toMatch(
      /hub_connections_closed_total\{code="4009"\} 1/,
    );
  }, 60_000);

  it('an SDK client resumes through the outage and ends with every event (3 005 of 3 005), in order', async () => {
    const since = await nowCursor();
    for (let i = 0; i < 3; i++) await write(1000);
    const hub = await startHub(SMALL_RING);
    await lockOut();
    const events: HubEvent[] = [];
    const states: Array<[ClientState, StateDetail]> = [];
    const errors: string[] = [];
    const client = createHubClient({
      url: `ws://127.0.0.1:${hub.port}/ws`,
      token: await token({ sub: 'sdk', role: 'admin' }),
      topics: ['election:*'],
      since,
      WebSocket: WebSocket as never,
      backoff: { initialMs: 50, maxMs: 400 },
    });
    clients.push(client);
    client.onEvent((e) => events.push(e));
    client.onState((s, d) => states.push([s, d]));
    client.on('error', (f) => errors.push(f.code));
    // The hub answered the resume (whatever it answered) while it could not read.
    await waitUntil(
      () => errors.length > 0 || states.some(([s, d]) => s === 'reconnecting' && d.code !== undefined),
      20_000,
      'an answer to the resume',
    );
    await letIn();
    await write(5);
    const expected = await outboxAfter(since);
    expect(expected).toHaveLength(3005);
    await waitUntil(() => events.length >= 3005, 30_000, '3 005 events').catch(() => undefined);
    expect(events.length).toBe(3005);
    expect(events.map((e) => e.cursor)).toEqual(expected);
    expect(states.some(([s, d]) => s === 'reconnecting' && d.code === 4009)).toBe(true);
  }, 90_000);
});

// Close codes and error codes are checked against README.md and docs/asyncapi.json in
// src/errors.test.ts.

// The delivery seam's own cases (a read failing on the first or a later page, a hub not reading
// yet) are unit tests beside it: src/hub/delivery.test.ts.

describe('SDK: any error answer to a resume means reconnect and resume', () => {
  let server: WebSocketServer | undefined;
  afterEach(async () => {
    for (const c of server?.clients ?? []) c.terminate();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });

  it('after {"type":"error","code":"internal"} to a subscribe with since, the client reconnects and resumes from the same cursor, ignoring what the failed socket sends next', async () => {
    const resumes: Array<string | undefined> = [];
    const s = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: (p) => [...p][0] ?? false });
    server = s;
    s.on('connection', (ws) => {
      ws.send(JSON.stringify({ type: 'connection_success', sub: 's', topics: [], cursor: '5.0' }));
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString()) as { type: string; since?: string };
        if (f.type !== 'subscribe') return;
        resumes.push(f.since);
        if (resumes.length === 1) {
          // The old hub: an error, then live events past the gap on the same socket.
          ws.send(JSON.stringify({ type: 'error', code: 'internal', message: 'subscription failed; retry' }));
          ws.send(
            JSON.stringify({
              type: 'guarantee_update',
              action: 'created',
              election_id: 1,
              committee_id: 1,
              id: 9,
              data: {},
              cursor: '9.1',
              committed_at: new Date().toISOString(),
            }),
          );
        } else {
          ws.send(JSON.stringify({ type: 'subscribed', topics: ['election:1'], cursor: '9.0' }));
        }
      });
    });
    await new Promise((r) => s.on('listening', r));
    const url = `ws://127.0.0.1:${(s.address() as { port: number }).port}/ws`;
    const states: Array<[ClientState, StateDetail]> = [];
    const client = createHubClient({
      url,
      token: 't',
      topics: ['election:1'],
      since: '3.0',
      WebSocket: WebSocket as never,
      backoff: { initialMs: 10, maxMs: 50 },
    });
    clients.push(client);
    client.onState((st, d) => states.push([st, d]));
    await waitUntil(() => resumes.length >= 2, 10_000, 'a second resume');
    expect(resumes.slice(0, 2)).toEqual(['3.0', '3.0']);
    expect(states.some(([st, d]) => st === 'reconnecting' && /resume failed/.test(d.reason ?? ''))).toBe(true);
  });
});

describe('readiness', () => {
  it('is not flipped by one failed read, but is by reads failing for a while', () => {
    const base = { shuttingDown: false, listenerConnected: true, started: true, now: 10_000 };
    expect(readiness({ ...base, readerFailure: undefined })).toEqual({ ok: true });
    expect(readiness({ ...base, readerFailure: { since: 9_950, count: 1 } })).toEqual({ ok: true });
    expect(readiness({ ...base, readerFailure: { since: 9_500, count: 4 } })).toEqual({ ok: true });
    expect(readiness({ ...base, readerFailure: { since: 5_000, count: 6 } })).toEqual({
      ok: false,
      reason: 'database',
    });
    expect(readiness({ ...base, listenerConnected: false, readerFailure: undefined })).toEqual({
      ok: false,
      reason: 'database',
    });
    expect(readiness({ ...base, started: false, readerFailure: undefined })).toEqual({ ok: false, reason: 'database' });
    expect(readiness({ ...base, shuttingDown: true, readerFailure: undefined })).toEqual({
      ok: false,
      reason: 'shutting_down',
    });
  });

  it('/ready turns 503 while the outbox reader fails though the listener stays connected, and says only "database"; /admin/health has the details', async () => {
    const hub = await startHub();
    const admin = await token({ sub: 'ops', role: 'admin' });
    expect((await fetch(`${hub.url}/ready`)).status).toBe(200);
    // Only the pool's backends: the listener's own connection stays up.
    await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    await root.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'election-hub'`,
      [name],
    );
    await waitUntil(async () => (await fetch(`${hub.url}/ready`)).status === 503, 15_000, '/ready 503');
    const res = await fetch(`${hub.url}/ready`);
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ status: 'unavailable', reason: 'database' });
    const health = (await (
      await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })
    ).json()) as {
      database: { connected: boolean; reader: { failing: boolean; error: string | null } };
    };
    expect(health.database.connected).toBe(true);
    expect(health.database.reader.failing).toBe(true);
    expect(health.database.reader.error).toContain(name);
    await letIn();
    await waitUntil(async () => (await fetch(`${hub.url}/ready`)).status === 200, 15_000, '/ready 200 again');
  }, 60_000);

  it("the listener's error text (it names the database) never reaches /ready", async () => {
    // Started while the database refuses: the listener's connect fails with the server's
    // message, which names the database.
    await lockOut();
    const hub = await startHub();
    const admin = await token({ sub: 'ops', role: 'admin' });
    const details = async () =>
      (
        (await (await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })).json()) as {
          database: { listener_error: string | null };
        }
      ).database;
    await waitUntil(
      async () => ((await details()).listener_error ?? '').includes(name),
      15_000,
      'the listener error to name the database',
    );
    const text = await (await fetch(`${hub.url}/ready`)).text();
    expect(text).not.toContain(name);
    expect(JSON.parse(text)).toEqual({ status: 'unavailable', reason: 'database' });
  }, 60_000);
});

describe('token policy', () => {
  it('a token without exp is refused with 401 on the upgrade and on HTTP routes, counted as missing_exp', async () => {
    const hub = await startHub();
    const noExp = await new SignJWT({ role: 'admin' })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('forever')
      .setIssuedAt()
      .sign(new TextEncoder().encode(SECRET));
    expect(await upgradeStatus(hub, { token: noExp })).toBe(401);
    expect((await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${noExp}` } })).status).toBe(
      401,
    );
    expect((await fetch(`${hub.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${noExp}` } })).status).toBe(
      401,
    );
    expect(await (await fetch(`${hub.metricsUrl}/metrics`)).text()).toMatch(
      /hub_auth_failures_total\{reason="missing_exp"\} 3/,
    );
    // The same claims with an exp are fine.
    const withExp = await new SignJWT({ role: 'admin' })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('forever')
      .setIssuedAt()
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(SECRET));
    expect(await upgradeStatus(hub, { token: withExp })).toBe(101);
  });

  it("an exp beyond setTimeout's range (~24.8 days) still expires the socket (timer re-armed in chunks)", () => {
    vi.useFakeTimers();
    try {
      const s = { expiry: undefined as NodeJS.Timeout | undefined };
      let fired = 0;
      const thirtyDays = 30 * 24 * 3600 * 1000;
      armExpiry(s, Date.now() + thirtyDays, () => fired++);
      vi.advanceTimersByTime(thirtyDays - 60_000);
      expect(fired).toBe(0);
      vi.advanceTimersByTime(60_000);
      expect(fired).toBe(1);
      // A year away, too; and clearing s.expiry cancels whichever chunk is pending.
      const year = 365 * 24 * 3600 * 1000;
      armExpiry(s, Date.now() + year, () => fired++);
      vi.advanceTimersByTime(year / 2);
      clearTimeout(s.expiry);
      vi.advanceTimersByTime(year);
      expect(fired).toBe(1);
      // An exp already past fires at once (on the next tick).
      armExpiry(s, Date.now() - 1000, () => fired++);
      vi.advanceTimersByTime(0);
      expect(fired).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('a token naming 1 000 elections auto-subscribes at most MAX_TOPICS_PER_CONNECTION topics and says so with too_many_topics', async () => {
    const hub = await startHub({ MAX_TOPICS_PER_CONNECTION: '200' });
    const elections = Array.from({ length: 1000 }, (_, i) => i + 1);
    const c = await connect(hub, { token: await token({ sub: 'wide', elections }) });
    const hello = await c.next((f) => f.type === 'connection_success');
    const topics = hello.topics as string[];
    expect(topics).toHaveLength(200);
    expect(topics).toContain('user:wide');
    expect(topics.filter((t) => t.startsWith('election:'))).toEqual(
      elections.slice(0, 199).map((e) => `election:${e}`),
    );
    const err = await c.next((f) => f.type === 'error');
    expect(err.code).toBe('too_many_topics');
    expect(c.frames.findIndex((f) => f.type === 'error')).toBeGreaterThan(
      c.frames.findIndex((f) => f.type === 'connection_success'),
    );
    const r = (await (
      await fetch(`${hub.url}/admin/health`, {
        headers: { authorization: `Bearer ${await token({ sub: 'ops', role: 'admin' })}` },
      })
    ).json()) as { topics: Record<string, number> };
    expect(Object.keys(r.topics)).toHaveLength(200);
    // The socket still works; one more topic is refused.
    c.send({ type: 'subscribe', topics: ['election:999'] });
    expect((await c.next((f) => f.type === 'error' && f !== err)).code).toBe('too_many_topics');
    await c.close();
  });
});
