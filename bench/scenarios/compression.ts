/*
 * `node bin/run-ts.mjs bench/scenarios/compression.ts [--quick|--smoke] [--modes off,shared,…] [--out file.json]`
 *
 * permessage-deflate, measured both ways: for each WS_COMPRESSION mode, a server with the
 * hub's socket options (bench/servers/uws-compress.ts) publishes an election night's frames —
 * row events (300/s, ~300 B each) and coalesced dashboard deltas (every 250 ms) — to
 * whole-election dashboards (rows + updates) and totals-only dashboards (updates), all
 * offering permessage-deflate as browsers do; once more with clients that do not offer it.
 * Reported per mode: bytes on the wire per dashboard and second (each kind), bytes per
 * delivery, server CPU per delivery, server memory per connection. This is what chose the
 * default (docs/BENCHMARKS.md "Compression"). No database: the hub's own path adds the same
 * work in every mode.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { sleep, wallNow } from '../lib/clock.ts';
import { RESULTS, killAll, spawnTs } from '../lib/procs.ts';
import type { Child } from '../lib/rpc.ts';
import type { CompressServerApi } from '../servers/uws-compress.ts';
import type { DeflateClientsApi, Group, GroupStats } from '../workers/deflate-clients.ts';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    smoke: { type: 'boolean', default: false },
    modes: { type: 'string' },
    out: { type: 'string' },
  },
  strict: true,
});
type Mode = 'smoke' | 'quick' | 'full';
const mode: Mode = flags.smoke ? 'smoke' : flags.quick ? 'quick' : 'full';
const SIZES: Record<Mode, { election: number; totals: number; seconds: number; workers: number }> = {
  smoke: { election: 10, totals: 10, seconds: 2, workers: 1 },
  quick: { election: 200, totals: 300, seconds: 10, workers: 2 },
  full: { election: 400, totals: 1600, seconds: 30, workers: 3 },
};
const size = SIZES[mode];
const RATE = 300;
const DEBOUNCE_MS = 250;
/** `mode` or `mode>=N` (frames under N bytes sent uncompressed: WS_COMPRESSION_MIN_BYTES). */
const MODES = (
  flags.modes ?? 'off,shared,shared>=1024,dedicated-4kb,dedicated-32kb,dedicated-256kb,dedicated-4kb>=1024'
).split(',');
/**
 * The updates-only run publishes deltas 4× as often (from rows generated 4× as fast, so each
 * delta is as large as at the real rate): enough deliveries to measure their CPU. A server
 * that cannot keep that pace publishes fewer, larger deltas: reported as `behind`.
 */
const UPDATE_SPEEDUP = 4;
const LOG_DIR = join(RESULTS, 'logs');
const T0 = wallNow();
const log = (msg: string) =>
  process.stderr.write(`[compression ${((wallNow() - T0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

type Part = {
  /** Deliveries the server made (frames × subscribers) and the messages the clients counted. */
  deliveries: number;
  received: number;
  cpuSeconds: number;
  cpuPerDeliveryUs: number;
  /** Average bytes on the wire per message, and the frames' own size. */
  wirePerMessage: number;
  framePerMessage: number;
  /** Frames published per second (at the real rate). */
  perSecond: number;
  /** The server published less than 90% of the frames the pace asked for (it was saturated). */
  behind: boolean;
};

type Result = {
  mode: string;
  offer: boolean;
  negotiated: number;
  rows: Part;
  updates: Part;
  /** Per dashboard and second: rows and updates (whole election), updates only (totals). */
  election: { wirePerSec: number; rawPerSec: number };
  totals: { wirePerSec: number; rawPerSec: number };
  rssPerConnBytes: number;
  closed: number;
};

const split = (n: number, k: number, workers: number) => Math.floor(n / workers) + (k < n % workers ? 1 : 0);

async function measure(workers: Array<Child<DeflateClientsApi>>, caseName: string, offer: boolean): Promise<Result> {
  const [wsMode, min] = caseName.split('>=');
  const { child, ready } = await spawnTs<CompressServerApi>(`compress-${wsMode}`, 'bench/servers/uws-compress.ts', {
    logDir: LOG_DIR,
    env: { WS_COMPRESSION: wsMode, WS_COMPRESSION_MIN_BYTES: min ?? '0' },
    nodeArgs: ['--expose-gc'],
  });
  const { port } = ready as { port: number };
  const groups: Array<[Group, number]> = [
    [{ name: 'election', path: '/ws?topics=rows,dash', offer, decode: false }, size.election],
    [{ name: 'totals', path: '/ws?topics=dash', offer, decode: false }, size.totals],
  ];
  const connect = async (half: 0 | 1) => {
    for (const [group, n] of groups) {
      const count = half === 0 ? Math.floor(n / 2) : n - Math.floor(n / 2);
      await Promise.all(
        workers.map((w, k) =>
          w.call('connect', {
            host: '127.0.0.1',
            port,
            group,
            count: split(count, k, workers.length),
            first: 0,
            concurrency: 16,
            sampleEvery: 0,
          }),
        ),
      );
    }
    await sleep(300);
  };
  const run = (seconds: number, publishRows: boolean, publishUpdates: boolean, speedup = 1) =>
    child.call(
      'run',
      { seconds, rowsPerSecond: RATE * speedup, debounceMs: DEBOUNCE_MS / speedup, publishRows, publishUpdates },
      120_000 + seconds * 1000,
    );
  const rss = async () => {
    await child.call('gc', undefined);
    await sleep(200);
    return (await child.call('memory', undefined)).rss;
  };
  const stats = async () => {
    const all = await Promise.all(workers.map((w) => w.call('stats', undefined)));
    const out: Record<string, Pick<GroupStats, 'conns' | 'open' | 'negotiated' | 'wire' | 'messages'>> = {};
    for (const s of all) {
      for (const [name, g] of Object.entries(s)) {
        const o = (out[name] ??= { conns: 0, open: 0, negotiated: 0, wire: 0, messages: 0 });
        o.conns += g.conns;
        o.open += g.open;
        o.negotiated += g.negotiated;
        o.wire += g.wire;
        o.messages += g.messages;
      }
    }
    return out;
  };
  /** One measured run of one frame kind; the clients' counters cover exactly it. */
  let idleCpuPerSecond = 0;
  let idleFastCpuPerSecond = 0;
  const part = async (kind: 'rows' | 'updates'): Promise<Part> => {
    await Promise.all(workers.map((w) => w.call('reset', undefined)));
    const speedup = kind === 'updates' ? UPDATE_SPEEDUP : 1;
    const r = await run(size.seconds, kind === 'rows', kind === 'updates', speedup);
    // What the run costs without sending (making the frames, the timer) is not the deliveries'.
    r.cpuSeconds = Math.max(
      0,
      r.cpuSeconds - (kind === 'updates' ? idleFastCpuPerSecond : idleCpuPerSecond) * r.seconds,
    );
    await sleep(500);
    const s = await stats();
    const wire = (s.election?.wire ?? 0) + (kind === 'updates' ? (s.totals?.wire ?? 0) : 0);
    const received = (s.election?.messages ?? 0) + (kind === 'updates' ? (s.totals?.messages ?? 0) : 0);
    const deliveries = kind === 'rows' ? r.rows * r.subs.rows : r.updates * r.subs.dash;
    const frames = kind === 'rows' ? r.rows : r.updates;
    const frameBytes = kind === 'rows' ? r.rowBytes : r.updateBytes;
    return {
      deliveries,
      received,
      cpuSeconds: r.cpuSeconds,
      cpuPerDeliveryUs: (r.cpuSeconds / Math.max(1, deliveries)) * 1e6,
      wirePerMessage: wire / Math.max(1, received),
      // Frame plus its 2-4 byte WebSocket header.
      framePerMessage: frameBytes / Math.max(1, frames) + (frameBytes / Math.max(1, frames) < 126 ? 2 : 4),
      perSecond: frames / r.seconds / speedup,
      behind:
        kind === 'rows'
          ? r.rows < 0.9 * RATE * r.seconds
          : r.updates < (0.9 * (r.seconds * 1000 * speedup)) / DEBOUNCE_MS,
    };
  };
  try {
    // Memory per connection: the growth from the second half of the sockets, both halves warm
    // (traffic has passed on every socket), so one-time growth is not counted.
    await connect(0);
    await run(1, true, true);
    const rssA = await rss();
    await connect(1);
    await run(1, true, true);
    const rssB = await rss();
    const added = groups.reduce((n, [, count]) => n + (count - Math.floor(count / 2)), 0);
    const idle = await run(size.seconds, false, false);
    idleCpuPerSecond = idle.cpuSeconds / idle.seconds;
    const idleFast = await run(size.seconds, false, false, UPDATE_SPEEDUP);
    idleFastCpuPerSecond = idleFast.cpuSeconds / idleFast.seconds;
    const rows = await part('rows');
    const updates = await part('updates');
    const s = await stats();
    await Promise.all(workers.map((w) => w.call('closeAll', undefined)));
    const perSec = (p: Part) => ({ wire: p.wirePerMessage * p.perSecond, raw: p.framePerMessage * p.perSecond });
    return {
      mode: caseName,
      offer,
      negotiated: (s.election?.negotiated ?? 0) + (s.totals?.negotiated ?? 0),
      rows,
      updates,
      election: {
        wirePerSec: perSec(rows).wire + perSec(updates).wire,
        rawPerSec: perSec(rows).raw + perSec(updates).raw,
      },
      totals: { wirePerSec: perSec(updates).wire, rawPerSec: perSec(updates).raw },
      rssPerConnBytes: (rssB - rssA) / added,
      closed: Object.values(s).reduce((n, g) => n + g.conns - g.open, 0),
    };
  } finally {
    await child.call('stop', undefined).catch(() => undefined);
    await child.kill(3000);
  }
}

const kb = (b: number) => `${(b / 1024).toFixed(1)} KB`;

async function main() {
  log(
    `mode ${mode}: ${size.election} whole-election + ${size.totals} totals-only dashboards, ${RATE} rows/s, updates every ${DEBOUNCE_MS} ms, ${size.seconds} s per case`,
  );
  const workers = (
    await Promise.all(
      Array.from({ length: size.workers }, (_, k) =>
        spawnTs<DeflateClientsApi>(`deflate-clients-${k}`, 'bench/workers/deflate-clients.ts', { logDir: LOG_DIR }),
      ),
    )
  ).map((s) => s.child);
  const results: Result[] = [];
  const cases: Array<[string, boolean]> = [...MODES.map((m) => [m, true] as [string, boolean]), ['shared', false]];
  for (const [m, offer] of cases) {
    const r = await measure(workers, m, offer);
    results.push(r);
    const lost = r.rows.deliveries + r.updates.deliveries - r.rows.received - r.updates.received;
    log(
      `  ${m.padEnd(16)} ${offer ? 'offered ' : 'no offer'}: rows ${r.rows.wirePerMessage.toFixed(0)} of ${r.rows.framePerMessage.toFixed(0)} B, ` +
        `${r.rows.cpuPerDeliveryUs.toFixed(2)} µs/delivery; updates ${r.updates.wirePerMessage.toFixed(0)} of ${r.updates.framePerMessage.toFixed(0)} B, ` +
        `${r.updates.cpuPerDeliveryUs.toFixed(2)} µs/delivery${r.rows.behind || r.updates.behind ? ' (server saturated: fewer frames than paced)' : ''}; ` +
        `${(r.rssPerConnBytes / 1024).toFixed(1)} KB RSS/conn; ${r.negotiated} negotiated` +
        `${r.closed ? `, ${r.closed} closed` : ''}${lost ? `, ${lost} deliveries missing` : ''}`,
    );
  }
  console.log(
    `\npermessage-deflate — mode ${mode}, ${new Date().toISOString()}; ${size.election} whole-election + ${size.totals} totals-only dashboards, ${RATE} rows/s, a delta every ${DEBOUNCE_MS} ms, ${size.seconds} s per frame kind`,
  );
  console.log(
    '| WS_COMPRESSION | clients | row event on the wire | row CPU/delivery | dashboard delta on the wire | delta CPU/delivery | whole-election dashboard | totals-only dashboard | RSS/connection |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|');
  const pctOf = (a: number, b: number) => `${((a / b) * 100).toFixed(0)}%`;
  for (const r of results) {
    console.log(
      `| ${r.mode} | ${r.offer ? 'offer' : 'no offer'} | ${r.rows.wirePerMessage.toFixed(0)} B (${pctOf(r.rows.wirePerMessage, r.rows.framePerMessage)}) | ${r.rows.cpuPerDeliveryUs.toFixed(2)} µs | ` +
        `${r.updates.wirePerMessage.toFixed(0)} B (${pctOf(r.updates.wirePerMessage, r.updates.framePerMessage)}) | ${r.updates.cpuPerDeliveryUs.toFixed(2)} µs | ` +
        `${kb(r.election.wirePerSec)}/s | ${kb(r.totals.wirePerSec)}/s | ${(r.rssPerConnBytes / 1024).toFixed(1)} KB |${r.rows.behind || r.updates.behind ? ' saturated' : ''}`,
    );
  }
  const out = flags.out ?? join(RESULTS, `compression-${mode}.json`);
  writeFileSync(out, JSON.stringify({ mode, size, rate: RATE, debounceMs: DEBOUNCE_MS, results }, null, 2));
  console.log(`results: ${out}`);
}

try {
  await main();
} finally {
  await killAll(3000);
}
process.exit(0);
