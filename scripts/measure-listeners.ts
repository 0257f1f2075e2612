/**
 * How much does each LISTENing hub cost PostgreSQL? Measures, for N idle listeners on the
 * hub's channel: commit latency of a writer's small transaction with NOTIFY, writer
 * throughput, and the time until the last listener has the notification.
 *   node bin/run-ts.mjs scripts/measure-listeners.ts [postgres-url]
 */
import pg from 'pg';

const url = process.argv[2] ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const COUNTS = [1, 10, 25, 50, 70];
const TXNS = 400;

const admin = new pg.Client({ connectionString: url });
await admin.connect();
const maxConn = Number((await admin.query<{ m: string }>('SHOW max_connections')).rows[0]?.m);
const db = `listeners_${process.pid}`;
await admin.query(`CREATE DATABASE ${db}`);
const dbUrl = new URL(url);
dbUrl.pathname = `/${db}`;
const writer = new pg.Client({ connectionString: dbUrl.toString() });
await writer.connect();
await writer.query('CREATE TABLE t (id bigserial primary key, v int)');

const rows: Array<Record<string, string | number>> = [];
const listeners: pg.Client[] = [];
try {
  for (const n of COUNTS) {
    if (n + 25 > maxConn) break; // leave room for everything else on the server
    while (listeners.length < n) {
      const c = new pg.Client({ connectionString: dbUrl.toString() });
      await c.connect();
      await c.query('LISTEN hub_outbox');
      listeners.push(c);
    }
    let pending = new Map<string, { start: number; left: number; resolve: (ms: number) => void }>();
    for (const c of listeners) {
      c.removeAllListeners('notification');
      c.on('notification', (m) => {
        const p = pending.get(m.payload ?? '');
        if (p && --p.left === 0) {
          pending.delete(m.payload ?? '');
          p.resolve(performance.now() - p.start);
        }
      });
    }
    const commit: number[] = [];
    const fanout: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < TXNS; i++) {
      const key = `${n}-${i}`;
      const reached = new Promise<number>((resolve) =>
        pending.set(key, { start: performance.now(), left: listeners.length, resolve }),
      );
      const s = performance.now();
      await writer.query(`BEGIN; INSERT INTO t (v) VALUES (${i}); SELECT pg_notify('hub_outbox', '${key}'); COMMIT`);
      commit.push(performance.now() - s);
      fanout.push(await reached);
    }
    const secs = (performance.now() - t0) / 1000;
    const q = (a: number[], p: number) => a.slice().sort((x, y) => x - y)[Math.floor((a.length - 1) * p)] ?? 0;
    rows.push({
      listeners: n,
      'commit p50 ms': q(commit, 0.5).toFixed(3),
      'commit p99 ms': q(commit, 0.99).toFixed(3),
      'last listener p50 ms': q(fanout, 0.5).toFixed(3),
      'last listener p99 ms': q(fanout, 0.99).toFixed(3),
      'txn/s (serial)': Math.round(TXNS / secs),
    });
    pending = new Map();
  }
  console.table(rows);
  console.log(JSON.stringify(rows));
} finally {
  await Promise.all(listeners.map((c) => c.end()));
  await writer.end();
  await admin.query(`DROP DATABASE ${db} WITH (FORCE)`);
  await admin.end();
}
