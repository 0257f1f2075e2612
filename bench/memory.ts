/*
 * `node bin/run-ts.mjs bench/memory.ts [--mb 2048] [--heap 512] [--row-kb 150] [--per-statement 20] [--incompressible]`
 *
 * Large rows against a small V8 heap: writes `--mb` of `--row-kb` rows through one healthy
 * reader to a hub started with `--max-old-space-size=--heap` (its own process, the bench's
 * hub-process.ts), and prints what happened: whether the hub lived, rows and bytes the reader
 * got (it resumes from its cursor after a 4008, as the SDK does), its closes, write rate,
 * and the hub's peak RSS, heap and replay-ring figures (sampled from /admin/health).
 * Row text is compressible by default (PostgreSQL stores it small, so the run is quick; the
 * hub still handles every row at full size); `--incompressible` writes random text instead.
 * Exit status 1 if the hub died or the reader missed rows.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import WebSocket from 'ws';
import { signToken } from '../src/auth/jwt.ts';
import { compare, decodeCursor, type Position } from '../src/events/position.ts';
import { createBenchDatabase } from './lib/db.ts';
import { RESULTS, killAll, spawnTs } from './lib/procs.ts';
import { sleep } from './lib/clock.ts';
import type { HubProcessApi } from './hub-process.ts';

const { values: flags } = parseArgs({
  options: {
    mb: { type: 'string', default: '2048' },
    heap: { type: 'string', default: '512' },
    'row-kb': { type: 'string', default: '150' },
    'per-statement': { type: 'string', default: '20' },
    incompressible: { type: 'boolean', default: false },
  },
});
const totalMb = Number(flags.mb);
const heapMb = Number(flags.heap);
const rowKb = Number(flags['row-kb']);
const perStatement = Number(flags['per-statement']);
const rows = Math.ceil((totalMb * 1024) / rowKb / perStatement) * perStatement;
const SECRET = 'bench-secret-0123456789abcdef-0123456789';
const ADMIN_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';

const peakRssMb = (pid: number) =>
  Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;

const db = await createBenchDatabase(ADMIN_URL);
const pool = new pg.Pool({ connectionString: db.url, max: 2 });
let failed: boolean | undefined; // set once the run completes; undefined (a throw) is a failure
try {
  await pool.query(`INSERT INTO elections (id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'E1')`);
  await pool.query(`INSERT INTO committees (id, election_id, name) OVERRIDING SYSTEM VALUE VALUES (1, 1, 'C1')`);
  const { child, ready } = await spawnTs<HubProcessApi>('hub-memory', 'bench/hub-process.ts', {
    env: { DATABASE_URL: db.url, JWT_SECRET: SECRET, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'warn', REDIS_URL: '' },
    nodeArgs: [`--max-old-space-size=${heapMb}`],
    logDir: join(RESULTS, 'logs'),
  });
  const { port, pid } = ready as { port: number; pid: number };
  const admin = await signToken(SECRET, { sub: 'bench-admin', role: 'admin' });
  const readerToken = await signToken(SECRET, { sub: 'bench-reader', elections: [1] });

  // The healthy reader: reads as fast as it can, resumes after any close.
  const r = {
    events: 0,
    bytes: 0,
    ordered: true,
    closes: [] as number[],
    last: undefined as string | undefined,
    done: false,
  };
  let lastPos: Position | undefined;
  let ws: WebSocket | undefined;
  let opened!: () => void;
  const openedOnce = new Promise<void>((res) => (opened = res));
  const attach = (resume: boolean) => {
    const sock = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${readerToken}${resume ? '&subscribe=none' : ''}`);
    ws = sock;
    sock.on('error', () => undefined);
    sock.on('open', () => {
      if (resume) sock.send(JSON.stringify({ type: 'subscribe', topics: ['election:1'], since: r.last }));
    });
    sock.on('message', (data: Buffer) => {
      const text = data.toString();
      if (text.startsWith('{"type":"connection_success"')) {
        r.last ??= (JSON.parse(text) as { cursor: string }).cursor;
        opened();
        return;
      }
      if (!text.startsWith('{"type":"guarantee_update"')) return;
      const at = text.lastIndexOf('"cursor":"');
      const cursor = text.slice(at + 10, text.indexOf('"', at + 10));
      const p = decodeCursor(cursor);
      if (!p || (lastPos && compare(p, lastPos) <= 0)) r.ordered = false;
      lastPos = p;
      r.last = cursor;
      r.events++;
      r.bytes += data.length;
    });
    sock.on('close', (code) => {
      r.closes.push(code);
      if (!r.done && ws === sock && child.alive) setTimeout(() => attach(true), 50);
    });
  };
  attach(false);
  await openedOnce;

  // Samples the hub's own figures while the rows go through.
  const peak = { heap: 0, ring: 0, buffered: 0 };
  let sampling = true;
  const sampler = (async () => {
    while (sampling && child.alive) {
      try {
        const h = (await (
          await fetch(`http://127.0.0.1:${port}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })
        ).json()) as {
          memory?: { heap_used_bytes: number; ring: { bytes: number }; buffered: { bytes: number } };
        };
        if (h.memory) {
          peak.heap = Math.max(peak.heap, h.memory.heap_used_bytes);
          peak.ring = Math.max(peak.ring, h.memory.ring.bytes);
          peak.buffered = Math.max(peak.buffered, h.memory.buffered.bytes);
        }
      } catch {
        // the hub is busy or gone: the next sample says which
      }
      await sleep(250);
    }
  })();

  const text = flags.incompressible
    ? `(SELECT string_agg(md5(g::text || '.' || i::text || random()::text), '') FROM generate_series(1, ${Math.ceil((rowKb * 1024) / 32)}) i)`
    : `repeat(md5($2::text || '.' || g::text), ${Math.ceil((rowKb * 1024) / 32)})`;
  const t0 = performance.now();
  let written = 0;
  for (let i = 0; i < rows / perStatement && child.alive; i++, written += perStatement) {
    await pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT 1, 1, ${text} FROM generate_series(1, $1::int) g`,
      flags.incompressible ? [perStatement] : [perStatement, i],
    );
  }
  const writeS = (performance.now() - t0) / 1000;
  const deadline = Date.now() + 300_000;
  while (r.events < rows && child.alive && Date.now() < deadline) await sleep(100);
  const totalS = (performance.now() - t0) / 1000;
  sampling = false;
  await sampler;
  const alive = child.alive;
  const rss = alive ? peakRssMb(pid) : NaN;
  r.done = true;
  ws?.close();

  const mb = (n: number) => (n / 1024 / 1024).toFixed(0);
  console.log(
    `memory bench: ${rows} rows × ${rowKb} KB (${flags.incompressible ? 'incompressible' : 'compressible'}) = ${mb(rows * rowKb * 1024)} MB, hub heap cap ${heapMb} MB`,
  );
  console.log(`  hub alive: ${alive ? 'yes' : `NO (see ${child.logFile})`}`);
  console.log(
    `  reader: ${r.events}/${rows} rows, ${mb(r.bytes)} MB, in order: ${r.ordered}, closes: ${r.closes.length ? r.closes.join(',') : 'none'}`,
  );
  console.log(
    `  ${written} rows written in ${writeS.toFixed(1)} s (${((written * rowKb) / 1024 / writeS).toFixed(0)} MB/s); reader done after ${totalS.toFixed(1)} s`,
  );
  console.log(
    `  hub peak RSS ${rss.toFixed(0)} MB, peak heap used ${mb(peak.heap)} MB, ring peak ${mb(peak.ring)} MB, buffered peak ${mb(peak.buffered)} MB (sampled every 250 ms)`,
  );
  failed = !alive || r.events !== rows || !r.ordered;
  await child.kill(5000);
} finally {
  await killAll();
  await pool.end();
  await db.drop();
}
process.exitCode = failed === false ? 0 : 1;
