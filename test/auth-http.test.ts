import { generateKeyPairSync } from 'node:crypto';
import { request } from 'node:http';
import { SignJWT, importPKCS8 } from 'jose';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { SECRET, connect, eventsReceived, startTestHub, token, upgradeStatus, waitUntil } from './support/hub.ts';
import type { Hub } from '../src/main.ts';

let db: TestDatabase;
let hub: Hub;
let e1: number;
let c1: number;
let redis: Redis;
const prefix = `t${Date.now().toString(36)}`;

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
  redis = new Redis(inject('redisUrl'));
  hub = await startTestHub(db.url, {
    JWT_AUDIENCE: 'dashboards',
    REDIS_URL: inject('redisUrl'),
    DASHBOARD_CACHE_KEYS: `${prefix}:dashboard:{election_id},${prefix}:summary:{election_id}`,
  });
});

afterAll(async () => {
  await hub?.stop();
  await redis?.quit();
  await db?.drop();
});

const status = (opts: Parameters<typeof connect>[1]) => upgradeStatus(hub, opts);

const get = async (path: string, bearer?: string) => {
  const res = await fetch(`${hub.url}${path}`, { headers: bearer ? { authorization: `Bearer ${bearer}` } : {} });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

/** A WebSocket upgrade request answered without upgrading: its status and JSON body. */
const refusal = (h: { port: number }, headers: Record<string, string>) =>
  new Promise<{ status: number; body: unknown }>((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port: h.port,
      path: '/ws',
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    req.on('upgrade', (_res, socket) => {
      socket.destroy();
      reject(new Error('upgraded'));
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown }));
    });
    req.on('error', reject);
    req.end();
  });

describe('WebSocket authentication happens before the upgrade', () => {
  it('missing, forged, expired, wrong-audience and garbage tokens are 401', async () => {
    const good = await token({ sub: 'ok', elections: [e1], audience: 'dashboards' });
    expect(await status({ token: good })).toBe(101);
    expect(await status({})).toBe(401);
    expect(
      await status({ token: await token({ sub: 'x', audience: 'dashboards' }, 'another-secret-0123456789abcdef0123') }),
    ).toBe(401);
    // Expired a minute ago, beyond the clock tolerance (JWT_CLOCK_TOLERANCE, 5 s); signed as signToken does.
    const now = Math.floor(Date.now() / 1000);
    const expired = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject('x')
      .setAudience('dashboards')
      .setIssuedAt(now - 120)
      .setExpirationTime(now - 60)
      .sign(new TextEncoder().encode(SECRET));
    expect(await status({ token: expired })).toBe(401);
    expect(await status({ token: await token({ sub: 'x', audience: 'elsewhere' }) })).toBe(401);
    expect(await status({ token: 'garbage' })).toBe(401);
    expect(await status({ token: await token({ sub: 'x' }) })).toBe(401); // no audience at all
    // alg none and an RS256 token are refused: the algorithm is pinned to HS256.
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'x', aud: 'dashboards', role: 'admin' })).toString('base64url')}.`;
    expect(await status({ token: none })).toBe(401);
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rs = await new SignJWT({ role: 'admin' })
      .setProtectedHeader({ alg: 'RS256' })
      .setSubject('x')
      .setAudience('dashboards')
      .setExpirationTime('1h')
      .sign(await importPKCS8(privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), 'RS256'));
    expect(await status({ token: rs })).toBe(401);
    // The body is an HTTP error body of the one error table (src/errors.ts), as on the routes.
    expect(await refusal(hub, {})).toEqual({ status: 401, body: { error: 'unauthorized', reason: 'missing' } });
    expect(await refusal(hub, { authorization: `Bearer ${rs}` })).toEqual({
      status: 401,
      body: { error: 'unauthorized', reason: 'bad_algorithm' },
    });
    const metrics = await (await fetch(`${hub.metricsUrl}/metrics`)).text();
    for (const reason of ['missing', 'bad_signature', 'expired', 'bad_audience', 'malformed', 'bad_algorithm']) {
      expect(metrics).toMatch(new RegExp(`hub_auth_failures_total\\{reason="${reason}"\\} [1-9]`));
    }
  }, 30_000);

  it('query, Authorization header and bearer subprotocol tokens all work', async () => {
    const t = await token({ sub: 'ways', elections: [e1], audience: 'dashboards' });
    const viaQuery = await connect(hub, { token: t });
    const viaHeader = await connect(hub, { headers: { authorization: `Bearer ${t}` } });
    const viaProtocol = await connect(hub, { protocols: ['json', `bearer.${t}`] });
    expect(viaProtocol.ws.protocol).toBe(`bearer.${t}`);
    for (const c of [viaQuery, viaHeader, viaProtocol])
      expect((await c.next((f) => f.type === 'connection_success')).sub).toBe('ways');
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    for (const c of [viaQuery, viaHeader, viaProtocol]) await eventsReceived(c, 1);
    await Promise.all([viaQuery.close(), viaHeader.close(), viaProtocol.close()]);
  });

  it('a socket whose token expires is closed with 4001', async () => {
    const c = await connect(hub, {
      token: await token({ sub: 'short', elections: [e1], audience: 'dashboards', ttl: '2s' }),
    });
    expect((await c.closed).code).toBe(4001);
  }, 15_000);
});

describe('HTTP routes', () => {
  it('/health and /ready', async () => {
    expect(await get('/health')).toEqual({ status: 200, body: { status: 'ok' } });
    expect((await get('/ready')).status).toBe(200);
  });

  it('/admin/health: 401 without or with a bad token, 403 for a non-admin, 200 with the report', async () => {
    expect((await get('/admin/health')).status).toBe(401);
    expect((await get('/admin/health', 'nope')).status).toBe(401);
    expect(
      (await get('/admin/health', await token({ sub: 'u', elections: [e1], audience: 'dashboards' }))).status,
    ).toBe(403);
    const c = await connect(hub, { token: await token({ sub: 'watcher', elections: [e1], audience: 'dashboards' }) });
    await c.next((f) => f.type === 'connection_success');
    const r = await get('/admin/health', await token({ sub: 'root', role: 'admin', audience: 'dashboards' }));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({
      status: 'ok',
      connections: 1,
      redis: { configured: true, connected: true },
      database: { connected: true },
    });
    expect((r.body.topics as Record<string, number>)[`election:${e1}`]).toBe(1);
    expect(typeof (r.body.database as { cursor: unknown }).cursor).toBe('string');
    await c.close();
  });

  it('/metrics counts connections as sockets open and close', async () => {
    const gauge = async () =>
      Number(/^hub_connections (\d+)/m.exec(await (await fetch(`${hub.metricsUrl}/metrics`)).text())?.[1]);
    const t = await token({ sub: 'counted', elections: [e1], audience: 'dashboards' });
    const base = await gauge();
    const cs = await Promise.all([1, 2, 3].map(() => connect(hub, { token: t })));
    await waitUntil(async () => (await gauge()) === base + 3, 5000, 'gauge +3');
    await cs[0]?.close();
    await waitUntil(async () => (await gauge()) === base + 2, 5000, 'gauge +2');
    await Promise.all(cs.map((c) => c.close()));
    await waitUntil(async () => (await gauge()) === base, 5000, 'gauge back');
  });

  it('/dashboard/{id}: 401, 403, 404, and numbers equal to the database', async () => {
    const viewer = await token({ sub: 'dash', elections: [e1], audience: 'dashboards' });
    expect((await get(`/dashboard/${e1}`)).status).toBe(401);
    expect((await get(`/dashboard/${e1 + 1}`, viewer)).status).toBe(403);
    expect(
      (await get('/dashboard/999999', await token({ sub: 'a', role: 'admin', audience: 'dashboards' }))).status,
    ).toBe(404);
    const c = await connect(hub, { token: viewer });
    await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 7), ($1, $2, 5)`, [
      e1,
      c1,
    ]);
    await db.pool.query(`INSERT INTO attendance (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    await c.next((f) => f.type === 'dashboard_update');
    await waitUntil(
      async () => {
        const r = await get(`/dashboard/${e1}`, viewer);
        const q = await db.pool.query<{ g: string; a: string; v: string }>(
          `SELECT (SELECT count(*) FROM guarantees WHERE election_id = $1)::text g, (SELECT count(*) FROM attendance WHERE election_id = $1)::text a,
                (SELECT coalesce(sum(count), 0) FROM votes WHERE election_id = $1)::text v`,
          [e1],
        );
        const row = q.rows[0];
        return (
          JSON.stringify(r.body.totals) ===
          JSON.stringify({ guarantees: Number(row?.g), attendance: Number(row?.a), votes: Number(row?.v) })
        );
      },
      5000,
      'snapshot equal to the database',
    );
    const r = await get(`/dashboard/${e1}`, viewer);
    expect(r.body).toMatchObject({ election_id: e1 });
    expect(typeof r.body.cursor).toBe('string');
    const committees = r.body.committees as Array<{ committee_id: number; votes: number }>;
    expect(committees.find((x) => x.committee_id === c1)?.votes).toBeGreaterThanOrEqual(12);
    await c.close();
  });

  it('a burst of 1000 changes yields a handful of dashboard_update frames and no computation; the extra keys are deleted', async () => {
    const viewer = await token({ sub: 'burst', elections: [e1], audience: 'dashboards' });
    const c = await connect(hub, { token: viewer });
    await c.next((f) => f.type === 'connection_success');
    await get(`/dashboard/${e1}`, viewer); // the totals are held (computed at most once)
    const computed = async () => {
      const text = await (await fetch(`${hub.metricsUrl}/metrics`)).text();
      return [...text.matchAll(/^hub_dashboard_computations_total\{[^}]*\} (\d+)/gm)].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
    };
    const before = await computed();
    await redis.set(`${prefix}:dashboard:${e1}`, 'stale app cache');
    await redis.set(`${prefix}:summary:${e1}`, 'stale app cache');
    for (let i = 0; i < 1000; i++) {
      await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    }
    await eventsReceived(c, 1000, 30_000);
    await waitUntil(
      async () => {
        const last = [...c.frames].reverse().find((f) => f.type === 'dashboard_update');
        const count = await db.pool.query<{ n: string }>(
          `SELECT count(*)::text n FROM guarantees WHERE election_id = $1`,
          [e1],
        );
        return (last?.totals as { guarantees: number } | undefined)?.guarantees === Number(count.rows[0]?.n);
      },
      5000,
      'final dashboard_update',
    );
    const updates = c.frames.filter((f) => f.type === 'dashboard_update').length;
    expect(updates).toBeGreaterThan(0);
    expect(updates).toBeLessThan(60); // 1000 writes over a few seconds, at most one per DASHBOARD_DEBOUNCE
    expect(await redis.get(`${prefix}:dashboard:${e1}`)).toBeNull();
    expect(await redis.get(`${prefix}:summary:${e1}`)).toBeNull();
    // The totals followed the stream: GET /dashboard/{id} agrees with the database, and nothing was computed.
    const count = await db.pool.query<{ n: string }>(`SELECT count(*)::text n FROM guarantees WHERE election_id = $1`, [
      e1,
    ]);
    expect(((await get(`/dashboard/${e1}`, viewer)).body.totals as { guarantees: number }).guarantees).toBe(
      Number(count.rows[0]?.n),
    );
    expect((await computed()) - before).toBe(0);
    await c.close();
  }, 60_000);
});

describe('origin and connection limits', () => {
  it('a disallowed Origin is 403; the limit per sub is 429', async () => {
    const h = await startTestHub(db.url, { ALLOWED_ORIGINS: 'https://ok.example', MAX_CONNECTIONS_PER_SUB: '3' });
    try {
      const t = await token({ sub: 'limited', elections: [e1] });
      const bad = await connect(h, { token: t, headers: { origin: 'https://evil.example' } }).catch(
        (e: { status?: number }) => e.status,
      );
      expect(bad).toBe(403);
      expect(await refusal(h, { authorization: `Bearer ${t}`, origin: 'https://evil.example' })).toEqual({
        status: 403,
        body: { error: 'forbidden', reason: 'origin' },
      });
      const cs = await Promise.all(
        [1, 2, 3].map(() => connect(h, { token: t, headers: { origin: 'https://ok.example' } })),
      );
      const fourth = await connect(h, { token: t }).catch((e: { status?: number }) => e.status);
      expect(fourth).toBe(429);
      expect(await refusal(h, { authorization: `Bearer ${t}` })).toEqual({
        status: 429,
        body: { error: 'too_many_connections' },
      });
      await cs[0]?.close();
      await waitUntil(
        async () => {
          const c = await connect(h, { token: t }).catch(() => undefined);
          await c?.close();
          return c !== undefined;
        },
        5000,
        'a slot to free up',
      );
      await Promise.all(cs.map((c) => c.close()));
    } finally {
      await h.stop();
    }
  });
});

void SECRET;
