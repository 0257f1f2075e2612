import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { SignJWT, exportJWK } from 'jose';
import fc from 'fast-check';
import pg from 'pg';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { capturedLogs, connect, eventsReceived, startTestHub, token, upgradeStatus, waitUntil } from './support/hub.ts';
import { findFreePort } from '../demo/embedded-postgres.ts';

let db: TestDatabase;
let e1: number;
let e2: number;
let c1: number;
const issued: string[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  [e1, e2] = s.elections as [number, number];
  c1 = (s.committees.get(e1) as number[])[0] as number;
});
afterAll(async () => db?.drop());

const pem = (k: KeyObject) => k.export({ type: 'spki', format: 'pem' }).toString();
const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

async function sign(
  key: KeyObject | Uint8Array,
  alg: string,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = {},
  exp: string | number = '1h',
) {
  let j = new SignJWT(claims)
    .setProtectedHeader({ alg, ...header })
    .setIssuedAt()
    .setExpirationTime(exp);
  if (claims.sub === undefined)
    j = new SignJWT({ ...claims })
      .setProtectedHeader({ alg, ...header })
      .setIssuedAt()
      .setExpirationTime(exp);
  const t = await j.sign(key);
  issued.push(t);
  return t;
}

describe('token matrix with an RS256 public key and issuer/audience: each refused with 401 and counted', () => {
  it('refuses everything but a valid RS256 token', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const hub = await startTestHub(db.url, {
      JWT_SECRET: '',
      JWT_PUBLIC_KEY: pem(publicKey),
      JWT_ISSUER: 'election-app',
      JWT_AUDIENCE: 'dashboards',
    });
    try {
      const base = { sub: 'u1', elections: [e1], iss: 'election-app', aud: 'dashboards' };
      const valid = await sign(privateKey, 'RS256', base);
      expect(await upgradeStatus(hub, { token: valid })).toBe(101);
      const [h, p, sig] = valid.split('.') as [string, string, string];
      const cases: Record<string, string> = {
        none: `${b64({ alg: 'none', typ: 'JWT' })}.${p}.`,
        unknownKey: await sign(other.privateKey, 'RS256', base),
        // Algorithm confusion: HS256 keyed with the public key's PEM text.
        confusion: await sign(new TextEncoder().encode(pem(publicKey)), 'HS256', base),
        tampered: `${h}.${b64({ ...base, role: 'admin', exp: Math.floor(Date.now() / 1000) + 3600 })}.${sig}`,
        wrongAudience: await sign(privateKey, 'RS256', { ...base, aud: 'other' }),
        wrongIssuer: await sign(privateKey, 'RS256', { ...base, iss: 'evil' }),
        noSub: await sign(privateKey, 'RS256', { elections: [e1], iss: 'election-app', aud: 'dashboards' }),
        notYetValid: await sign(privateKey, 'RS256', { ...base, nbf: Math.floor(Date.now() / 1000) + 3600 }),
        expired: await sign(privateKey, 'RS256', base, {}, Math.floor(Date.now() / 1000) - 3600),
        garbage: 'eyJhbGciOi.garbage.!!',
        badClaims: await sign(privateKey, 'RS256', { ...base, elections: ['one'] }),
      };
      for (const [name, t] of Object.entries(cases)) {
        expect({ name, status: await upgradeStatus(hub, { token: t }) }).toEqual({ name, status: 401 });
        const res = await fetch(`${hub.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${t}` } });
        expect({ name, status: res.status }).toEqual({ name, status: 401 });
      }
      const metrics = await (await fetch(`${hub.metricsUrl}/metrics`)).text();
      for (const reason of [
        'malformed',
        'bad_signature',
        'bad_algorithm',
        'bad_audience',
        'bad_issuer',
        'not_yet_valid',
        'expired',
        'bad_claims',
      ]) {
        expect({
          reason,
          counted: new RegExp(`hub_auth_failures_total\\{reason="${reason}"\\} [1-9]`).test(metrics),
        }).toEqual({ reason, counted: true });
      }
    } finally {
      await hub.stop();
    }
  });

  it('ES256 and EdDSA public keys work with their own algorithm only', async () => {
    for (const [type, alg] of [
      ['ec', 'ES256'],
      ['ed25519', 'EdDSA'],
    ] as const) {
      const pair = type === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
      const hub = await startTestHub(db.url, { JWT_SECRET: '', JWT_PUBLIC_KEY: pem(pair.publicKey) });
      try {
        expect(
          await upgradeStatus(hub, { token: await sign(pair.privateKey, alg, { sub: 'k', elections: [e1] }) }),
        ).toBe(101);
        expect(
          await upgradeStatus(hub, {
            token: await sign(new TextEncoder().encode(pem(pair.publicKey)), 'HS256', { sub: 'k' }),
          }),
        ).toBe(401);
      } finally {
        await hub.stop();
      }
    }
  });

  it('JWKS: a known kid works; an unknown kid and a non-string kid are refused', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    let fetches = 0;
    const server: Server = createServer((req, res) => {
      fetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const hub = await startTestHub(db.url, { JWT_SECRET: '', JWKS_URL: `http://127.0.0.1:${port}/jwks.json` });
    try {
      expect(
        await upgradeStatus(hub, {
          token: await sign(privateKey, 'RS256', { sub: 'j', elections: [e1] }, { kid: 'k1' }),
        }),
      ).toBe(101);
      expect(await upgradeStatus(hub, { token: await sign(privateKey, 'RS256', { sub: 'j' }, { kid: 'nope' }) })).toBe(
        401,
      );
      expect(await upgradeStatus(hub, { token: await sign(privateKey, 'RS256', { sub: 'j' }, { kid: 123 }) })).toBe(
        401,
      );
      expect(
        await upgradeStatus(hub, {
          token: await sign(new TextEncoder().encode('x'.repeat(40)), 'HS256', { sub: 'j' }, { kid: 'k1' }),
        }),
      ).toBe(401);
      // The key set is cached: a burst of upgrades does not hammer the JWKS endpoint.
      const before = fetches;
      for (let i = 0; i < 5; i++)
        await upgradeStatus(hub, {
          token: await sign(privateKey, 'RS256', { sub: 'j', elections: [e1] }, { kid: 'k1' }),
        });
      expect(fetches - before).toBeLessThanOrEqual(1);
      expect(await (await fetch(`${hub.metricsUrl}/metrics`)).text()).toMatch(
        /hub_auth_failures_total\{reason="unknown_key"\} [1-9]/,
      );
    } finally {
      await hub.stop();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('client frames from a hostile client', () => {
  it('10 000 fuzzed frames: no crash, nothing beyond the claims, ping still answers', async () => {
    const hub = await startTestHub(db.url, { MAX_MESSAGES_PER_SECOND: '1000000' });
    const errors: unknown[] = [];
    const onRejection = (e: unknown) => errors.push(e);
    process.on('unhandledRejection', onRejection);
    try {
      const t = await token({ sub: 'fuzzer', elections: [e1] });
      issued.push(t);
      const topic = fc.oneof(
        fc.constantFrom(
          'election:*',
          `election:${e1}`,
          `election:${e2}`,
          `committee:${c1}`,
          'committee:999999',
          'user:fuzzer',
          'user:other',
          'election:',
          'election:-1',
          'election:1e9',
          'user:',
          'x',
        ),
        fc.string({ maxLength: 30 }),
      );
      const frame = fc.oneof(
        fc.string({ maxLength: 200 }),
        fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
        fc
          .record(
            {
              type: fc.constantFrom('subscribe', 'unsubscribe', 'ping', 'pong', 'SUBSCRIBE', '__proto__'),
              topics: fc.oneof(fc.array(topic, { maxLength: 5 }), fc.anything()),
              since: fc.oneof(
                fc.constant(undefined),
                fc.string({ maxLength: 20 }),
                fc.integer(),
                fc.constantFrom('0.0', 'zzzzzzzzzzzzz.zzzzzzzzzzzzz', '1.1'),
              ),
            },
            { requiredKeys: ['type'] },
          )
          .map((v) => JSON.stringify(v)),
        fc.constantFrom(
          '{"type":"subscribe","topics":["election:*"]}',
          '{"__proto__":{"role":"admin"},"type":"subscribe","topics":["election:*"]}',
          '[]',
          'null',
          '{"type":"subscribe","topics":' + '['.repeat(500) + ']'.repeat(500) + '}',
        ),
      );
      const frames = fc.sample(frame, { numRuns: 10_000, seed: 42 });
      let client = await connect(hub, { token: t });
      await client.next((f) => f.type === 'connection_success');
      /** Keeps `client` open: closed for misbehaving (1008, 1009) is allowed; then a fresh socket. */
      const usable = async () => {
        if (client.ws.readyState === WebSocket.OPEN) return;
        const { code } = await client.closed;
        expect([1008, 1009]).toContain(code);
        client = await connect(hub, { token: t });
        await client.next((x) => x.type === 'connection_success');
      };
      let sent = 0;
      for (const f of frames) {
        await usable();
        client.send(f);
        sent++;
        if (sent % 500 === 0) {
          // Still answering after the fuzz so far: a ping gets its pong, on this socket or, if the
          // hub closed it for misbehaving before the ping reached it, on a fresh one.
          let answered = false;
          for (let attempt = 0; !answered; attempt++) {
            expect(attempt).toBeLessThan(3);
            await usable();
            const c = client;
            const from = c.frames.length;
            c.send({ type: 'ping' });
            await waitUntil(
              () =>
                (answered = c.frames.slice(from).some((x) => x.type === 'pong')) ||
                c.ws.readyState === WebSocket.CLOSED,
              10_000,
              `a pong after ${sent} fuzzed frames`,
            );
          }
        }
      }
      expect(sent).toBe(10_000);
      // Whatever was accepted, the socket is on no topic beyond its claims.
      const admin = await token({ sub: 'root', role: 'admin' });
      const health = (await (
        await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })
      ).json()) as { topics: Record<string, number> };
      const allowed = new Set([
        `election:${e1}`,
        `committee:${c1}`,
        'user:fuzzer',
        ...(await db.pool.query<{ id: number }>('SELECT id FROM committees WHERE election_id = $1', [e1])).rows.map(
          (r) => `committee:${r.id}`,
        ),
      ]);
      for (const topic of Object.keys(health.topics))
        expect({ topic, allowed: allowed.has(topic) }).toEqual({ topic, allowed: true });
      // Still alive: a fresh socket pings, and events of other elections never arrive.
      const probe = await connect(hub, { token: t });
      probe.send({ type: 'ping' });
      await probe.next((f) => f.type === 'pong');
      await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, 1)`, [e2]);
      await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
      // The e1 row is the marker: written after the e2 row, it arrives after that one would have.
      await probe.next((f) => f.type === 'guarantee_update' && f.election_id === e1);
      const events = probe.events();
      expect(events.length).toBeGreaterThan(0);
      expect(events.every((f) => f.election_id === e1)).toBe(true);
      for (const c of [client, probe]) await c.close();
      expect(errors).toEqual([]);
    } finally {
      process.off('unhandledRejection', onRejection);
      await hub.stop();
    }
  }, 120_000);

  it('a per-connection rate limit answers rate_limited, and topics per connection are bounded', async () => {
    const hub = await startTestHub(db.url, { MAX_MESSAGES_PER_SECOND: '5', MAX_TOPICS_PER_CONNECTION: '3' });
    try {
      const c = await connect(hub, { token: await token({ sub: 'chatty', role: 'admin' }), query: 'subscribe=none' });
      c.send({ type: 'subscribe', topics: ['election:1', 'election:2', 'election:3', 'election:4'] });
      expect(await c.next((f) => f.type === 'error')).toMatchObject({ code: 'too_many_topics' });
      for (let i = 0; i < 8; i++) c.send({ type: 'ping' });
      expect(await c.next((f) => f.type === 'error' && f.code === 'rate_limited')).toBeTruthy();
      await c.close();
    } finally {
      await hub.stop();
    }
  });
});

describe('faults', () => {
  it('Redis killed mid-stream: events keep flowing, snapshots are computed from PostgreSQL, /ready stays 200, /admin/health says degraded, and Redis comes back by itself', async () => {
    const port = await findFreePort();
    const startRedis = () =>
      spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
    let redis: ChildProcess = startRedis();
    const hub = await startTestHub(db.url, { REDIS_URL: `redis://127.0.0.1:${port}` });
    const admin = await token({ sub: 'ops', role: 'admin' });
    const health = async () =>
      (await (await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })).json()) as {
        status: string;
        redis: { connected: boolean };
      };
    try {
      await waitUntil(async () => (await health()).redis.connected, 10_000, 'redis connected');
      const c = await connect(hub, { token: admin });
      await c.next((f) => f.type === 'connection_success');
      await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 1)`, [e1, c1]);
      await eventsReceived(c, 1);
      redis.kill('SIGKILL');
      await waitUntil(async () => (await health()).status === 'degraded', 10_000, 'degraded');
      for (let i = 0; i < 5; i++)
        await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 1)`, [e1, c1]);
      await eventsReceived(c, 6);
      expect((await fetch(`${hub.url}/ready`)).status).toBe(200);
      const snap = await fetch(`${hub.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${admin}` } });
      expect(snap.status).toBe(200);
      const votes = (
        await db.pool.query<{ v: string }>('SELECT sum(count)::text v FROM votes WHERE election_id = $1', [e1])
      ).rows[0]?.v;
      expect(((await snap.json()) as { totals: { votes: number } }).totals.votes).toBe(Number(votes));
      redis = startRedis();
      await waitUntil(async () => (await health()).status === 'ok', 15_000, 'redis back');
      await c.close();
    } finally {
      redis.kill('SIGKILL');
      await hub.stop();
    }
  }, 60_000);

  it('PostgreSQL unreachable: /ready is 503 with the reason class; the hub reconnects by itself and catches up', async () => {
    const hub = await startTestHub(db.url);
    const admin = await token({ sub: 'ops2', role: 'admin' });
    const c = await connect(hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    const name = new URL(db.url).pathname.slice(1);
    const root = new pg.Client({ connectionString: db.url.replace(`/${name}`, '/postgres') });
    await root.connect();
    // Opened before the lock-out, so the writes below get through while the hub cannot connect.
    const writer = await db.pool.connect();
    try {
      await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
      await root.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'election-hub%'`,
        [name],
      );
      await waitUntil(async () => (await fetch(`${hub.url}/ready`)).status === 503, 10_000, '/ready 503');
      const body = (await (await fetch(`${hub.url}/ready`)).json()) as { reason: string };
      expect(body).toEqual({ status: 'unavailable', reason: 'database' });
      expect(await (await fetch(`${hub.metricsUrl}/metrics`)).text()).toMatch(/^hub_listener_connected 0$/m);
      // Writes made while the hub cannot read (through a connection opened before the lock-out).
      await writer.query(
        `INSERT INTO attendance (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, 20)`,
        [e1, c1],
      );
      await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
      await waitUntil(async () => (await fetch(`${hub.url}/ready`)).status === 200, 20_000, '/ready 200 again');
      await db.pool.query(
        `INSERT INTO attendance (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, 5)`,
        [e1, c1],
      );
      const expected = Number(
        (await db.pool.query<{ n: string }>(`SELECT count(*)::text n FROM hub.outbox WHERE kind = 'attendance'`))
          .rows[0]?.n,
      );
      await waitUntil(
        () => c.events().filter((f) => f.type === 'attendance_update').length >= expected,
        20_000,
        'catch-up',
      );
    } finally {
      writer.release();
      await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`).catch(() => undefined);
      await root.end();
      await c.close();
      await hub.stop();
    }
  }, 60_000);
});

describe('logs', () => {
  it('no token or secret reaches a log line, and opens/closes/refusals are structured audit events', async () => {
    const hub = await startTestHub(db.url);
    try {
      const t = await token({ sub: 'audited', elections: [e1] });
      issued.push(t);
      const c = await connect(hub, { token: t });
      await c.next((f) => f.type === 'connection_success');
      await c.close();
      await upgradeStatus(hub, { token: `${t}x` });
      await waitUntil(() => capturedLogs.some((l) => l.includes('"ws_close"')), 5000, 'close audit line');
      const lines = capturedLogs.map((l) => JSON.parse(l) as Record<string, unknown>);
      const open = lines.find((l) => l.event === 'ws_open' && l.sub === 'audited');
      expect(open).toMatchObject({ sub: 'audited', remote: expect.any(String) });
      expect(lines.find((l) => l.event === 'ws_refused' && l.reason === 'bad_signature')).toBeTruthy();
      expect(lines.find((l) => l.event === 'ws_close' && l.sub === 'audited')).toBeTruthy();
    } finally {
      await hub.stop();
    }
    const all = capturedLogs.join('');
    for (const t of issued) expect(all.includes(t.split('.')[2] ?? t)).toBe(false);
    expect(all).not.toMatch(/eyJ[A-Za-z0-9_-]{8,}\.eyJ/);
  });
});

describe('node capacity', () => {
  it('past MAX_CONNECTIONS the upgrade is refused with 503 (another node can take it), and a slot frees on close', async () => {
    const hub = await startTestHub(db.url, { MAX_CONNECTIONS: '3' });
    try {
      const cs = await Promise.all(
        [1, 2, 3].map(async (i) => connect(hub, { token: await token({ sub: `cap-${i}`, elections: [e1] }) })),
      );
      expect(await upgradeStatus(hub, { token: await token({ sub: 'cap-4', elections: [e1] }) })).toBe(503);
      await cs[0]?.close();
      await waitUntil(
        async () => (await upgradeStatus(hub, { token: await token({ sub: 'cap-5', elections: [e1] }) })) === 101,
        5000,
        'a free slot',
      );
      await Promise.all(cs.map((c) => c.close()));
    } finally {
      await hub.stop();
    }
  });
});
