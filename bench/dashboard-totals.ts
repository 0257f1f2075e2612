/*
 * `node bin/run-ts.mjs bench/dashboard-totals.ts [--committees 300] [--rows 200000] [--rate 300] [--seconds 20] [--dashboards 20]`
 *
 * Issue 11's dashboard figures on one sizable election, one hub in this process: full
 * dashboard computations during steady writes, and `dashboard_update` frames and bytes per
 * second per dashboard (uncompressed, as the hub counts them and as the clients receive them).
 * Election 1 has `--committees` committees and `--rows` guarantees (half as many attendance
 * rows, 10 votes rows per committee), seeded without capture; then a writer issues `--rate`
 * statements per second for `--seconds` (inserts, updates that move rows between committees,
 * deletes, vote count changes) while `--dashboards` sockets follow `election:1` and as many
 * follow `dashboard:1` (when the hub has that topic). Reported, never asserted.
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is the admin connection:
 * a database is created for the run and dropped after it.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import WebSocket from 'ws';
import { createBenchDatabase } from './lib/db.ts';
import { parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { signToken } from '../src/auth/jwt.ts';
import { startHub } from '../src/main.ts';

const { values } = parseArgs({
  options: {
    committees: { type: 'string', default: '300' },
    rows: { type: 'string', default: '200000' },
    rate: { type: 'string', default: '300' },
    seconds: { type: 'string', default: '20' },
    dashboards: { type: 'string', default: '20' },
  },
});
const COMMITTEES = Number(values.committees);
const ROWS = Number(values.rows);
const RATE = Number(values.rate);
const SECONDS = Number(values.seconds);
const DASHBOARDS = Number(values.dashboards);
const SECRET = 'bench-secret-0123456789abcdef-0123456789';

const metric = (text: string, name: string, label?: string) =>
  [...text.matchAll(new RegExp(`^${name}(\\{[^}]*\\})? ([0-9.e+]+)$`, 'gm'))]
    .filter((m) => label === undefined || (m[1] ?? '').includes(label))
    .reduce((n, m) => n + Number(m[2]), 0);

async function main() {
  const admin = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const db = await createBenchDatabase(admin);
  const pool = new pg.Pool({ connectionString: db.url, max: 6 });
  try {
    const c = await pool.connect();
    try {
      await c.query(`SET session_replication_role = replica`); // seed without capture: the hub starts after it
      await c.query(`INSERT INTO elections (id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'Election 1')`);
      await c.query(
        `INSERT INTO committees (id, election_id, name) OVERRIDING SYSTEM VALUE SELECT g, 1, 'Committee ' || g FROM generate_series(1, $1::int) g`,
        [COMMITTEES],
      );
      await c.query(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT 1, 1 + g % $1, 'voter ' || g FROM generate_series(1, $2::int) g`,
        [COMMITTEES, ROWS],
      );
      await c.query(
        `INSERT INTO attendance (election_id, committee_id, voter_name) SELECT 1, 1 + g % $1, 'voter ' || g FROM generate_series(1, $2::int) g`,
        [COMMITTEES, Math.floor(ROWS / 2)],
      );
      await c.query(
        `INSERT INTO votes (election_id, committee_id, candidate, count) SELECT 1, 1 + g % $1, 'cand ' || (g % 10), g % 50 FROM generate_series(1, $2::int) g`,
        [COMMITTEES, COMMITTEES * 10],
      );
      await c.query(`SET session_replication_role = DEFAULT`);
      await c.query('ANALYZE');
    } finally {
      c.release();
    }
    const parsed = parseConfig({
      DATABASE_URL: db.url,
      JWT_SECRET: SECRET,
      PORT: '0',
      HOST: '127.0.0.1',
      METRICS_PORT: '0',
      LOG_LEVEL: 'warn',
      MAX_CONNECTIONS_PER_SUB: '10000',
    });
    if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
    const hub = await startHub(parsed.config, { log: createLogger('warn') });
    const scrape = async () => (await fetch(`${hub.metricsUrl}/metrics`)).text();
    try {
      const token = await signToken(SECRET, { sub: 'bench', elections: [1], ttl: '1h' });
      type Counter = { frames: number; bytes: number; rows: number; refused: boolean };
      const open = (topic: 'election' | 'dashboard') =>
        new Promise<Counter>((resolve, reject) => {
          const q = topic === 'election' ? '' : '&subscribe=none';
          const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws?token=${token}${q}`);
          const n: Counter = { frames: 0, bytes: 0, rows: 0, refused: false };
          ws.on('message', (data: Buffer) => {
            const text = data.toString();
            if (text.startsWith('{"type":"dashboard_update"')) {
              n.frames++;
              n.bytes += data.length;
            } else if (text.startsWith('{"type":"connection_success"')) {
              if (topic === 'dashboard') ws.send(JSON.stringify({ type: 'subscribe', topics: ['dashboard:1'] }));
              else resolve(n);
            } else if (text.startsWith('{"type":"subscribed"')) resolve(n);
            else if (text.startsWith('{"type":"error"')) {
              n.refused = true;
              resolve(n);
            } else n.rows++;
          });
          ws.on('error', reject);
          sockets.push(ws);
        });
      const sockets: WebSocket[] = [];
      const whole = await Promise.all(Array.from({ length: DASHBOARDS }, () => open('election')));
      const totalsOnly = await Promise.all(Array.from({ length: DASHBOARDS }, () => open('dashboard')));
      const hasTopic = !totalsOnly.some((n) => n.refused);
      await new Promise((r) => setTimeout(r, 2000)); // first-use computations and their updates settle
      for (const n of [...whole, ...totalsOnly]) Object.assign(n, { frames: 0, bytes: 0, rows: 0 });
      const before = await scrape();

      // The writer: RATE statements per second, each a transaction of its own.
      const ops = [
        (k: number) =>
          pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (1, $1, 'new')`, [
            1 + (k % COMMITTEES),
          ]),
        (k: number) =>
          pool.query(`INSERT INTO attendance (election_id, committee_id, voter_name) VALUES (1, $1, 'new')`, [
            1 + ((k * 7) % COMMITTEES),
          ]),
        (k: number) =>
          pool.query(`UPDATE guarantees SET committee_id = $1 WHERE id = $2`, [
            1 + ((k * 13) % COMMITTEES),
            1 + ((k * 7919) % ROWS),
          ]),
        (k: number) =>
          pool.query(`UPDATE guarantees SET status = 'confirmed' WHERE id = $1`, [1 + ((k * 104729) % ROWS)]),
        (k: number) => pool.query(`UPDATE votes SET count = count + 1 WHERE id = $1`, [1 + (k % (COMMITTEES * 10))]),
        (k: number) => pool.query(`DELETE FROM attendance WHERE id = $1`, [1 + ((k * 31) % Math.floor(ROWS / 2))]),
      ];
      const t0 = Date.now();
      let issued = 0;
      const inflight = new Set<Promise<unknown>>();
      while (Date.now() - t0 < SECONDS * 1000) {
        const due = Math.floor(((Date.now() - t0) / 1000) * RATE);
        while (issued < due) {
          const k = issued++;
          const p = (ops[k % ops.length] as (k: number) => Promise<unknown>)(k).finally(() => inflight.delete(p));
          inflight.add(p);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      await Promise.all(inflight);
      const elapsed = (Date.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 1000)); // the last update goes out
      const after = await scrape();

      const per = (ns: Counter[], f: (n: Counter) => number) =>
        ns.reduce((s, n) => s + f(n), 0) / Math.max(1, ns.length) / elapsed;
      const computations =
        metric(after, 'hub_dashboard_computations_total') - metric(before, 'hub_dashboard_computations_total');
      const hubBytes =
        metric(after, 'hub_bytes_sent_total', 'type="dashboard_update"') -
        metric(before, 'hub_bytes_sent_total', 'type="dashboard_update"');
      const hubFrames =
        metric(after, 'hub_messages_sent_total', 'type="dashboard_update"') -
        metric(before, 'hub_messages_sent_total', 'type="dashboard_update"');
      const receivers = DASHBOARDS * (hasTopic ? 2 : 1);
      console.log(
        JSON.stringify(
          {
            scale: {
              committees: COMMITTEES,
              guarantees: ROWS,
              attendance: Math.floor(ROWS / 2),
              votes: COMMITTEES * 10,
              statementsPerSecond: Math.round(issued / elapsed),
              seconds: Math.round(elapsed * 10) / 10,
              dashboards: { election: DASHBOARDS, dashboard: hasTopic ? DASHBOARDS : 'topic not available' },
            },
            fullComputations: computations,
            fullComputationsPerSecond: Math.round((computations / elapsed) * 100) / 100,
            dashboardUpdate: {
              perDashboardFramesPerSecond: Math.round(per(whole, (n) => n.frames) * 100) / 100,
              perDashboardBytesPerSecond: Math.round(per(whole, (n) => n.bytes)),
              averageFrameBytes: Math.round(
                whole.reduce((s, n) => s + n.bytes, 0) /
                  Math.max(
                    1,
                    whole.reduce((s, n) => s + n.frames, 0),
                  ),
              ),
              hubCountedBytesPerSecondPerReceiver: Math.round(hubBytes / elapsed / receivers),
              hubCountedFramesPerSecondPerReceiver: Math.round((hubFrames / elapsed / receivers) * 100) / 100,
            },
            rowEventsPerDashboardPerSecond: Math.round(per(whole, (n) => n.rows)),
            totalsOnlyDashboard: hasTopic
              ? {
                  bytesPerSecond: Math.round(per(totalsOnly, (n) => n.bytes)),
                  rowEventsPerSecond: per(totalsOnly, (n) => n.rows),
                }
              : null,
          },
          null,
          2,
        ),
      );
      for (const ws of sockets) ws.terminate();
    } finally {
      await hub.stop();
    }
  } finally {
    await pool.end();
    await db.drop();
  }
}

await main();
