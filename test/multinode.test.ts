import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  SECRET,
  type Frame,
  type TestClient,
  connect,
  eventsReceived,
  redisPrefix,
  startTestHub,
  token,
  untilMarker,
  waitUntil,
} from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { ZERO, compare, decodeCursor } from '../src/events/position.ts';

let db: TestDatabase;
let hubs: Hub[] = [];
let e1: number;
let c1: number;
let c2: number;
let admin: string;
let admins: string[];
const clients: TestClient[] = [];
const env = () => ({
  REDIS_URL: inject('redisUrl'),
  MAX_CONNECTIONS_PER_SUB: '2',
  CONNECTION_LEASE_TTL: '1500ms',
  PRESENCE_INTERVAL: '300ms',
});

const open = async (hub: { port: number }, opts: Parameters<typeof connect>[1]) => {
  const c = await connect(hub, opts);
  clients.push(c);
  return c;
};
const cursors = (fs: Frame[]) => fs.map((f) => String(f.cursor));
const computations = async (hs: Hub[]) => {
  let n = 0;
  for (const h of hs) {
    // One series per reason: add them up.
    const text = await (await fetch(`${h.metricsUrl}/metrics`)).text();
    const series = [...text.matchAll(/^hub_dashboard_computations_total\{[^}]*\} (\d+)/gm)];
    if (series.length === 0) throw new Error('no hub_dashboard_computations_total series in the scrape');
    for (const m of series) n += Number(m[1]);
  }
  return n;
};

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  e1 = s.elections[0] as number;
  [c1, c2] = s.committees.get(e1) as [number, number];
  admin = await token({ sub: 'multi-admin', role: 'admin' });
  // MAX_CONNECTIONS_PER_SUB is 2 across the cluster: one sub per socket where several are open.
  admins = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => token({ sub: `multi-admin-${i}`, role: 'admin' })));
  hubs = await Promise.all([1, 2, 3].map((i) => startTestHub(db.url, { ...env(), NODE_ID: `node-${i}` })));
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(hubs.map((h) => h.stop()));
  await db?.drop();
});

describe('several hubs on one database and one Redis', () => {
  it('three hubs, four concurrent writers, 200 rows: every node delivers all 200 in the same order', async () => {
    const cs = await Promise.all(hubs.map((h, i) => open(h, { token: admins[i] as string })));
    for (const c of cs) await c.next((f) => f.type === 'connection_success');
    await Promise.all(
      [0, 1, 2, 3].map(async (w) => {
        for (let i = 0; i < 50; i++) {
          const client = await db.pool.connect();
          try {
            await client.query('BEGIN');
            await client.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [
              e1,
              w % 2 ? c1 : c2,
              `w${w}-${i}`,
            ]);
            if (i % 7 === 0) await new Promise((r) => setTimeout(r, 5));
            await client.query('COMMIT');
          } finally {
            client.release();
          }
        }
      }),
    );
    const streams = await Promise.all(cs.map((c) => eventsReceived(c, 200, 30_000)));
    for (const c of cs) expect(await untilMarker(db.pool, c)).toHaveLength(200);
    expect(new Set(streams[0]?.map((f) => (f.data as { voter_name: string }).voter_name)).size).toBe(200);
    expect(cursors(streams[1] as Frame[])).toEqual(cursors(streams[0] as Frame[]));
    expect(cursors(streams[2] as Frame[])).toEqual(cursors(streams[0] as Frame[]));
    await Promise.all(cs.map((c) => c.close()));
  }, 60_000);

  it('a cursor from node 1 resumes on node 3 with exactly the remainder', async () => {
    const a = await open(hubs[0] as Hub, { token: admins[3] as string });
    await a.next((f) => f.type === 'connection_success');
    await db.pool.query(
      `INSERT INTO votes (election_id, committee_id, count) SELECT $1, $2, g FROM generate_series(1, 10) g`,
      [e1, c1],
    );
    const first = await eventsReceived(a, 10);
    await a.close();
    await db.pool.query(
      `INSERT INTO votes (election_id, committee_id, count) SELECT $1, $2, g FROM generate_series(11, 25) g`,
      [e1, c1],
    );
    const c = await open(hubs[2] as Hub, { token: admins[4] as string, query: 'subscribe=none' });
    c.send({ type: 'subscribe', topics: ['election:*'], since: String(first[4]?.cursor) });
    const rest = await eventsReceived(c, 20);
    expect(await untilMarker(db.pool, c, 'election:*')).toHaveLength(20);
    expect(rest.map((f) => (f.data as { count: number }).count)).toEqual(Array.from({ length: 20 }, (_, i) => i + 6));
    await c.close();
  });

  it('a sub limited to 2 is refused on a third node; a SIGKILLed node’s leases expire', async () => {
    const t = await token({ sub: 'limited-sub', elections: [e1] });
    const x = await open(hubs[0] as Hub, { token: t });
    const y = await open(hubs[1] as Hub, { token: t });
    const refused = await connect(hubs[2] as Hub, { token: t }).catch((e: { status?: number }) => e.status);
    expect(refused).toBe(429);
    await x.close();
    await waitUntil(
      async () => {
        const z = await connect(hubs[2] as Hub, { token: t }).catch(() => undefined);
        if (z) clients.push(z);
        return z !== undefined;
      },
      5000,
      'a freed slot on node 3',
    );
    await y.close();

    // A separate hub process holds both of another sub's slots, then dies without cleanup.
    const child = spawn(process.execPath, ['bin/election-hub.mjs', 'serve'], {
      env: {
        ...process.env,
        ...env(),
        DATABASE_URL: db.url,
        JWT_SECRET: SECRET,
        PORT: '0',
        HOST: '127.0.0.1',
        METRICS_PORT: '0',
        REDIS_PREFIX: redisPrefix(db.url),
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const rl = createInterface({ input: child.stdout });
        rl.on('line', (line) => {
          const m = /"port":(\d+)/.exec(line);
          if (m && line.includes('hub listening')) resolve(Number(m[1]));
        });
        child.once('exit', (code) => reject(new Error(`hub process exited ${code}`)));
      });
      const t2 = await token({ sub: 'killed-sub', elections: [e1] });
      const held = [await connect({ port }, { token: t2 }), await connect({ port }, { token: t2 })];
      expect(await connect(hubs[0] as Hub, { token: t2 }).catch((e: { status?: number }) => e.status)).toBe(429);
      child.kill('SIGKILL');
      await Promise.all(held.map((c) => c.closed));
      await waitUntil(
        async () => {
          const z = await connect(hubs[0] as Hub, { token: t2 }).catch(() => undefined);
          if (z) clients.push(z);
          return z !== undefined;
        },
        10_000,
        'the dead node’s leases to expire',
      );
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);

  it('/admin/health shows this node and the cluster', async () => {
    const c = await open(hubs[1] as Hub, { token: admin });
    await c.next((f) => f.type === 'connection_success');
    await waitUntil(
      async () => {
        const h = (await (
          await fetch(`${hubs[0]?.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })
        ).json()) as {
          node: string;
          cluster: { nodes: number; members: Array<{ id: string; connections: number }> };
        };
        return (
          h.node === 'node-1' &&
          h.cluster.nodes === 3 &&
          (h.cluster.members.find((m) => m.id === 'node-2')?.connections ?? 0) >= 1
        );
      },
      5000,
      'cluster view',
    );
    await c.close();
  });

  it('cache: three nodes, one burst, at most two snapshot computations in total', async () => {
    const viewer = await token({ sub: 'cache-viewer', elections: [e1] });
    const viewers = await Promise.all(hubs.map((_, i) => token({ sub: `cache-viewer-${i}`, elections: [e1] })));
    const cs = await Promise.all(hubs.map((h, i) => open(h, { token: viewers[i] as string })));
    for (const c of cs) await c.next((f) => f.type === 'connection_success');
    // Earlier tests' dashboard updates settle: one more row, and its dashboard_update on every node
    // (an update pending from before is the one that carries it), so none is pending when counting starts.
    await db.pool.query(`INSERT INTO attendance (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    const settled = Number(
      (await db.pool.query<{ n: string }>('SELECT count(*)::text n FROM attendance WHERE election_id = $1', [e1]))
        .rows[0]?.n,
    );
    for (const c of cs) {
      await waitUntil(
        () =>
          c.frames.some(
            (f) => f.type === 'dashboard_update' && (f.totals as { attendance: number }).attendance === settled,
          ),
        10_000,
        'the settling update on every node',
      );
    }
    const seen = cs.map((c) => c.events().length);
    const before = await computations(hubs);
    await db.pool.query(
      `INSERT INTO attendance (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, 300)`,
      [e1, c1],
    );
    const n = Number(
      (await db.pool.query<{ n: string }>('SELECT count(*)::text n FROM attendance WHERE election_id = $1', [e1]))
        .rows[0]?.n,
    );
    // As soon as every node has seen the burst, all of them want a fresh snapshot at once.
    for (const [i, c] of cs.entries())
      await waitUntil(() => c.events().length > (seen[i] ?? 0), 10_000, 'the burst on every node');
    const concurrent = await Promise.all(
      hubs.flatMap((h, i) =>
        [0, 1, 2].map(() =>
          fetch(`${h.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${viewers[i]}` } }).then(
            (r) => r.json() as Promise<{ totals: { attendance: number } }>,
          ),
        ),
      ),
    );
    for (const snap of concurrent) expect(snap.totals.attendance).toBe(n);
    for (const c of cs) {
      await waitUntil(
        () =>
          c.frames.some((f) => f.type === 'dashboard_update' && (f.totals as { attendance: number }).attendance === n),
        10_000,
        'dashboard_update on every node',
      );
    }
    expect((await computations(hubs)) - before).toBeLessThanOrEqual(2);
    // And the snapshot route on every node answers from the shared cache with the same numbers.
    for (const h of hubs) {
      const snap = (await (
        await fetch(`${h.url}/dashboard/${e1}`, { headers: { authorization: `Bearer ${viewer}` } })
      ).json()) as { totals: { attendance: number } };
      expect(snap.totals.attendance).toBe(n);
    }
    expect((await computations(hubs)) - before).toBeLessThanOrEqual(2);
    await Promise.all(cs.map((c) => c.close()));
  });

  it('one node stops: the others carry on, and its client resumes on another node without loss', async () => {
    const leaving = hubs[1] as Hub;
    const c = await open(leaving, { token: admins[5] as string });
    await c.next((f) => f.type === 'connection_success');
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        await db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [
          e1,
          c1,
          `m${written}`,
        ]);
        written++;
      }
    })();
    await waitUntil(() => c.events().length >= 20, 10_000, 'some events on node 2');
    await leaving.stop();
    expect((await c.closed).code).toBe(1001);
    const got = c.events();
    const r = await open(hubs[0] as Hub, { token: admins[0] as string, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: ['election:*'], since: String(got[got.length - 1]?.cursor) });
    // Writes go on across the move: some before the resume is live, some after.
    await r.next((f) => f.type === 'subscribed');
    const live = written;
    await waitUntil(() => written >= live + 20, 10_000, 'writes after the resume');
    writing = false;
    await writer;
    await waitUntil(() => got.length + r.events().length >= written, 15_000, 'all events after the move');
    const all = [...got, ...r.events()].map((f) => (f.data as { voter_name: string }).voter_name);
    expect(all).toEqual(Array.from({ length: written }, (_, i) => `m${i}`));
    const seq = [...got, ...r.events()].map((f) => decodeCursor(f.cursor));
    expect(seq.every((p, i) => i === 0 || compare(seq[i - 1] ?? ZERO, p ?? ZERO) < 0)).toBe(true);
    hubs = hubs.filter((h) => h !== leaving);
    await r.close();
  }, 60_000);
});
