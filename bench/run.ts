/*
 * `npm run bench [-- --quick | --smoke] [--only a,b] [--out file.json] [--profile]`
 *
 * Runs every scenario against a fresh database (created and dropped here), with the hub,
 * the baselines and the peers each in a child process of their own and the clients spread
 * over several client workers (bench/workers/clients.ts). Prints one table — each figure
 * next to a baseline measured in the same run, their ratio, the target and PASS/MISS — and
 * writes it with the raw measurements as JSON (bench/results/latest.json by default).
 *
 * Targets are reported, never asserted: the machine (2 cores shared by server, clients and
 * PostgreSQL) bounds every absolute figure, so the ratios are what to read.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchDatabase, committeeId, createBenchDatabase, seed, serverVersion } from './lib/db.ts';
import { sleep, wallNow } from './lib/clock.ts';
import { RESULTS, killAll, spawnTs } from './lib/procs.ts';
import type { Child } from './lib/rpc.ts';
import { type Row, renderTable } from './lib/report.ts';
import { type Summary, median, ms, si, summarize } from './lib/stats.ts';
import type { ClientApi, ConnectResult, Dashboard, Stats, Target, TargetKind } from './workers/clients.ts';
import type { PacedResult, Spot, WriterApi } from './workers/writer.ts';
import type { HubProcessApi } from './hub-process.ts';
import type { BareApi } from './servers/uws-bare.ts';

// ---- modes -------------------------------------------------------------------------------

type Mode = 'smoke' | 'quick' | 'full';
type Sizes = {
  workers: number;
  fanout: Array<{ clients: number; events: number }>;
  latency: { clients: number; idleRate: number; loadRate: number; seconds: number };
  memory: number[];
  write: { seconds: number; rounds: number; statementRows: number; statementRounds: number };
  electionNight?: { elections: number; committeesPer: number; committeeDashboards: number; electionDashboards: number; rate: number; seconds: number };
};

const SIZES: Record<Mode, Sizes> = {
  smoke: {
    workers: 2,
    fanout: [{ clients: 20, events: 100 }],
    latency: { clients: 4, idleRate: 50, loadRate: 500, seconds: 1 },
    memory: [200],
    write: { seconds: 1, rounds: 1, statementRows: 2000, statementRounds: 1 },
  },
  quick: {
    workers: 4,
    fanout: [{ clients: 1000, events: 1000 }],
    latency: { clients: 20, idleRate: 50, loadRate: 500, seconds: 3 },
    memory: [2000],
    write: { seconds: 2, rounds: 2, statementRows: 20_000, statementRounds: 3 },
  },
  full: {
    workers: 4,
    fanout: [
      { clients: 1000, events: 2000 },
      { clients: 10_000, events: 500 },
    ],
    latency: { clients: 100, idleRate: 50, loadRate: 500, seconds: 10 },
    memory: [10_000, 50_000],
    write: { seconds: 5, rounds: 2, statementRows: 20_000, statementRounds: 3 },
    electionNight: { elections: 20, committeesPer: 50, committeeDashboards: 19, electionDashboards: 50, rate: 500, seconds: 300 },
  },
};

const SCENARIOS = ['write-cost', 'latency', 'fan-out', 'peers', 'memory', 'connection-rate', 'election-night'] as const;
type Scenario = (typeof SCENARIOS)[number];

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
    out: { type: 'string' },
    profile: { type: 'boolean', default: false },
  },
  strict: true,
});
const mode: Mode = flags.smoke ? 'smoke' : flags.quick ? 'quick' : 'full';
const sizes = SIZES[mode];
const only = new Set((flags.only ?? '').split(',').map((s) => s.trim()).filter(Boolean));
for (const s of only) if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`--only: unknown scenario ${s} (${SCENARIOS.join(', ')})`);
const wanted = (s: Scenario) => only.size === 0 || only.has(s);

const ADMIN_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const SECRET = `bench-${randomBytes(16).toString('hex')}`;
const RUN_ID = randomBytes(3).toString('hex');
const LOG_DIR = join(RESULTS, 'logs');
const PROFILE_DIR = join(RESULTS, 'profiles');
const SEED = { elections: 20, committeesPer: 50 };
const E1_COMMITTEES = Array.from({ length: SEED.committeesPer }, (_, k) => committeeId(1, k + 1, SEED.committeesPer));

const log = (msg: string) => process.stderr.write(`[bench ${((wallNow() - T0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
const T0 = wallNow();

// ---- processes ---------------------------------------------------------------------------

let db: BenchDatabase | undefined;
let writer: Child<WriterApi>;
let clients: Array<Child<ClientApi>> = [];

type Server = {
  kind: TargetKind;
  port: number;
  pid: number;
  target: Target;
  stop(): Promise<void>;
  gc(): Promise<void>;
  /** Bare uWS only: publish `count` frames of `size` bytes. */
  publish(count: number, size: number): Promise<void>;
};

const LABEL: Record<TargetKind, string> = { hub: 'hub', bare: 'bare uWS', ws: 'ws hub', sio: 'socket.io hub' };

async function startServer(kind: TargetKind): Promise<Server> {
  if (!db) throw new Error('no database');
  const base = { logDir: LOG_DIR, fdLimit: 200_000 };
  if (kind === 'hub') {
    const { child, ready } = await spawnTs<HubProcessApi>('hub', 'bench/hub-process.ts', {
      ...base,
      // The hub as deployed: default limits, info logging (to a file), single node (no Redis).
      env: { DATABASE_URL: db.url, JWT_SECRET: SECRET, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', REDIS_URL: '' },
      nodeArgs: ['--expose-gc', ...(flags.profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : [])],
    });
    const { port, pid } = ready as { port: number; pid: number };
    // Upgrades need the listener connected and the reader started: wait for /ready.
    const deadline = Date.now() + 15_000;
    while ((await fetch(`http://127.0.0.1:${port}/ready`).then((r) => r.status, () => 0)) !== 200) {
      if (Date.now() > deadline) throw new Error('hub never became ready');
      await sleep(50);
    }
    return {
      kind,
      port,
      pid,
      target: { kind, host: '127.0.0.1', port },
      stop: async () => {
        await child.call('stop', undefined, 15_000).catch(() => undefined);
        await child.kill(5000);
      },
      gc: async () => void (await child.call('gc', undefined)),
      publish: () => Promise.reject(new Error('the hub publishes what the database says')),
    };
  }
  const file = { bare: 'bench/servers/uws-bare.ts', ws: 'bench/peers/ws-hub.ts', sio: 'bench/peers/socketio-hub.ts' }[kind];
  const name = { bare: 'bare-uws', ws: 'ws-hub', sio: 'socketio-hub' }[kind];
  const { child, ready } = await spawnTs<BareApi>(name, file, {
    ...base,
    env: { DATABASE_URL: db.url, JWT_SECRET: SECRET, REDIS_URL },
    nodeArgs: kind === 'bare' ? ['--expose-gc'] : [],
  });
  const { port, pid } = ready as { port: number; pid: number };
  return {
    kind,
    port,
    pid,
    target: { kind, host: '127.0.0.1', port },
    stop: async () => {
      await child.call('stop', undefined, 15_000).catch(() => undefined);
      await child.kill(5000);
    },
    gc: async () => void (kind === 'bare' ? await child.call('gc', undefined) : undefined),
    publish: async (count, size) => void (await child.call('publish', { count, size, batch: 1000 })),
  };
}

async function withServer<T>(kind: TargetKind, fn: (s: Server) => Promise<T>): Promise<T> {
  const s = await startServer(kind);
  try {
    return await fn(s);
  } finally {
    await closeAll();
    await s.stop();
  }
}

// ---- clients -----------------------------------------------------------------------------

type Connected = ConnectResult & { seconds: number; rate: number };

async function connectAll(target: Target, total: number, dashboards: Dashboard[], sampleEvery: number, concurrency = 32): Promise<Connected> {
  const K = clients.length;
  // Beyond ~28 000 connections per source address the ephemeral ports run out: spread them.
  const localAddresses = total > 20_000 ? ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'] : undefined;
  const results = await Promise.all(
    clients.map((c, k) =>
      c.call('connect', {
        target,
        count: Math.floor(total / K) + (k < total % K ? 1 : 0),
        worker: k,
        workers: K,
        dashboards,
        secret: SECRET,
        runId: `${RUN_ID}-${target.kind}-${Date.now().toString(36)}`,
        concurrency,
        ...(localAddresses ? { localAddresses } : {}),
        sampleEvery,
      }),
    ),
  );
  const failures: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.failures)) failures[k] = (failures[k] ?? 0) + v;
  const opened = results.reduce((n, r) => n + r.opened, 0);
  const t0 = Math.min(...results.map((r) => r.t0));
  const t1 = Math.max(...results.map((r) => r.t1));
  const seconds = (t1 - t0) / 1000;
  if (opened < total) log(`  ${LABEL[target.kind]}: ${total - opened} of ${total} connections failed: ${JSON.stringify(failures)}`);
  return { opened, failed: total - opened, failures, t0, t1, signMs: Math.max(...results.map((r) => r.signMs)), seconds, rate: opened / seconds };
}

/**
 * Connections still open a moment after connecting. uWS (this fork) occasionally drops a
 * freshly upgraded socket with 1006 when the upgrade completed asynchronously on a cold
 * process; such a socket is left out of the expected deliveries and counted apart.
 */
async function settle(connect: Connected): Promise<{ open: number; droppedAtOpen: number }> {
  await sleep(200);
  const s = await statsAll({ latencies: false, groups: false });
  return { open: s.open, droppedAtOpen: connect.opened - s.open };
}

const resetAll = (sampleEvery: number) => Promise.all(clients.map((c) => c.call('reset', { sampleEvery })));
const closeAll = () => Promise.all(clients.filter((c) => c.alive).map((c) => c.call('closeAll', undefined)));

type Merged = Omit<Stats, 'groups'> & { groups: Record<string, { conns: number; open: number; total: number; min: number; max: number }> };

async function statsAll(opts: { latencies: boolean; groups: boolean }): Promise<Merged> {
  const all = await Promise.all(clients.map((c) => c.call('stats', opts)));
  const m: Merged = { events: 0, other: 0, bytes: 0, first: 0, last: 0, open: 0, closed: 0, closeCodes: {}, groups: {}, latencies: [], notifyLatencies: [] };
  for (const s of all) {
    m.events += s.events;
    m.other += s.other;
    m.bytes += s.bytes;
    if (s.first > 0 && (m.first === 0 || s.first < m.first)) m.first = s.first;
    m.last = Math.max(m.last, s.last);
    m.open += s.open;
    m.closed += s.closed;
    for (const [k, v] of Object.entries(s.closeCodes)) m.closeCodes[k] = (m.closeCodes[k] ?? 0) + v;
    for (const [k, g] of Object.entries(s.groups)) {
      const t = (m.groups[k] ??= { conns: 0, open: 0, total: 0, min: Number.POSITIVE_INFINITY, max: 0 });
      t.conns += g.conns;
      t.open += g.open;
      t.total += g.total;
      t.min = Math.min(t.min, g.min);
      t.max = Math.max(t.max, g.max);
    }
    for (const x of s.latencies) m.latencies.push(x);
    for (const x of s.notifyLatencies) m.notifyLatencies.push(x);
  }
  return m;
}

/** Polls the workers until `expected` events arrived, or nothing moved for `stallMs`. */
async function waitDelivered(expected: number, stallMs: number, progressEveryMs = 0): Promise<{ complete: boolean; events: number }> {
  let last = -1;
  let lastChange = Date.now();
  let lastProgress = Date.now();
  for (;;) {
    const s = await statsAll({ latencies: false, groups: false });
    if (s.events >= expected) return { complete: true, events: s.events };
    if (s.events !== last) {
      last = s.events;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > stallMs) return { complete: false, events: s.events };
    if (progressEveryMs > 0 && Date.now() - lastProgress > progressEveryMs) {
      lastProgress = Date.now();
      log(`  … ${si(s.events)} of ${si(expected)} deliveries`);
    }
    await sleep(100);
  }
}

const dashboardsOf = (election: number): Dashboard[] => [{ elections: [election], group: `e${election}` }];
const e1Spots: Spot[] = E1_COMMITTEES.map((c) => ({ election: 1, committee: c }));

// ---- results -----------------------------------------------------------------------------

const rows: Row[] = [];
const raw: Record<string, unknown> = {};
const timings: Record<string, number> = {};

const pct = (s: Summary) => `p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms`;
const status = (ok: boolean): Row['status'] => (ok ? 'PASS' : 'MISS');

// ---- scenarios ---------------------------------------------------------------------------

type FanoutRun = {
  rate: number;
  delivered: number;
  expected: number;
  complete: boolean;
  seconds: number;
  frameBytes: number;
  other: number;
  latency: Summary;
  closed: number;
  connect: Connected;
  droppedAtOpen: number;
};

/** Connects `n` clients to `kind`, warms it up, then times one burst of `events` from first to last delivery. */
async function fanoutRun(kind: TargetKind, n: number, events: number, frameBytes: number): Promise<FanoutRun> {
  return withServer(kind, async (server) => {
    const connect = await connectAll(server.target, n, dashboardsOf(1), 0);
    const { open, droppedAtOpen } = await settle(connect);
    const fire = async (count: number) => {
      if (kind === 'bare') await server.publish(count, frameBytes);
      else await writer.call('bulk', { url: dbUrl(), total: count, batch: count, election: 1, firstCommittee: 1, committees: SEED.committeesPer });
    };
    const warm = Math.min(200, events);
    await resetAll(0);
    await fire(warm);
    await waitDelivered(open * warm, 10_000);
    await sleep(400); // let the warm-up's dashboard_update go out
    await resetAll(100);
    await fire(events);
    const done = await waitDelivered(open * events, 10_000);
    const s = await statsAll({ latencies: true, groups: false });
    const seconds = (s.last - s.first) / 1000;
    return {
      rate: s.events / seconds,
      delivered: s.events,
      expected: open * events,
      droppedAtOpen,
      seconds,
      frameBytes: s.bytes / Math.max(1, s.events),
      other: s.other,
      latency: summarize(s.latencies),
      closed: s.closed,
      connect,
      complete: done.complete,
    };
  });
}

const dbUrl = () => {
  if (!db) throw new Error('no database');
  return db.url;
};

async function fanout(includePeers: boolean, includeBase: boolean) {
  for (const { clients: n, events } of sizes.fanout) {
    const label = `${n.toLocaleString('en')} clients × ${events.toLocaleString('en')} events`;
    log(`fan-out: ${label}`);
    const hub = await fanoutRun('hub', n, events, 0);
    log(`  hub ${si(hub.rate)} deliveries/s (${si(hub.delivered)} of ${si(hub.expected)}, ${hub.frameBytes.toFixed(0)} B frames, ${hub.seconds.toFixed(2)} s)`);
    const results: Partial<Record<TargetKind, FanoutRun>> = { hub };
    const targets: TargetKind[] = [...(includeBase ? (['bare'] as const) : []), ...(includePeers ? (['ws', 'sio'] as const) : [])];
    for (const kind of targets) {
      const r = await fanoutRun(kind, n, events, Math.round(hub.frameBytes));
      results[kind] = r;
      log(`  ${LABEL[kind]} ${si(r.rate)} deliveries/s (${si(r.delivered)} of ${si(r.expected)}, ${r.seconds.toFixed(2)} s)`);
    }
    raw[`fan-out ${n}`] = results;
    const lost = (r: FanoutRun) => (r.delivered < r.expected ? ` (${si(r.expected - r.delivered)} lost)` : '');
    const bare = results.bare;
    if (bare) {
      const ratio = hub.rate / bare.rate;
      rows.push({
        scenario: 'fan-out',
        case: label,
        figure: `${si(hub.rate)} deliveries/s${lost(hub)}`,
        value: hub.rate,
        baseline: `bare uWS ${si(bare.rate)}/s${lost(bare)}`,
        baselineValue: bare.rate,
        ratio,
        ratioText: `${ratio.toFixed(2)}×`,
        target: '≥ 0.8× bare uWS',
        status: status(ratio >= 0.8 && hub.delivered === hub.expected),
      });
    }
    for (const [kind, target] of [
      ['ws', 3],
      ['sio', 8],
    ] as const) {
      const peer = results[kind];
      if (!peer) continue;
      const ratio = hub.rate / peer.rate;
      rows.push({
        scenario: 'peers',
        case: `fan-out ${n.toLocaleString('en')}: hub vs ${LABEL[kind]}`,
        figure: `hub ${si(hub.rate)}/s`,
        value: hub.rate,
        baseline: `${LABEL[kind]} ${si(peer.rate)}/s${lost(peer)}`,
        baselineValue: peer.rate,
        ratio,
        ratioText: `${ratio.toFixed(1)}×`,
        target: `≥ ${target}× ${LABEL[kind]}`,
        status: status(ratio >= target),
      });
    }
  }
}

type Phase = { name: string; rate: number; connections: number };

async function latency(includePeers: boolean) {
  const { clients: n, idleRate, loadRate, seconds } = sizes.latency;
  const phases: Phase[] = [
    { name: 'idle', rate: idleRate, connections: 1 },
    { name: 'load', rate: loadRate, connections: 4 },
  ];
  const paced = (p: Phase, kind: 'insert' | 'notify' | 'notify-only', secs = seconds) =>
    writer.call('paced', { url: dbUrl(), rate: p.rate, seconds: secs, connections: p.connections, kind, channel: 'bench_probe', spots: e1Spots });

  // Baseline: a pg client commits a one-row write that NOTIFYs its send time, and another (in
  // a client worker) LISTENs: the same commit (WAL flush included) as the hub's probe rows,
  // minus the capture and the hub. A read-only `SELECT pg_notify` is measured for reference.
  log('latency: bare LISTEN/NOTIFY');
  const first = clients[0];
  if (!first) throw new Error('no client worker');
  const notify: Record<string, { summary: Summary; sent: PacedResult }> = {};
  await first.call('listen', { url: dbUrl(), channel: 'bench_probe' });
  try {
    const variants: Array<[string, Phase, 'notify' | 'notify-only']> = [
      ...phases.map((p) => [p.name, p, 'notify'] as [string, Phase, 'notify']),
      ['idle, read-only NOTIFY', phases[0] as Phase, 'notify-only'],
    ];
    for (const [name, p, kind] of variants) {
      await first.call('reset', { sampleEvery: 0 });
      const sent = await paced(p, kind);
      await sleep(200);
      const s = await first.call('stats', { latencies: true, groups: false });
      notify[name] = { summary: summarize(s.notifyLatencies), sent };
      log(`  NOTIFY ${name}: ${pct(summarize(s.notifyLatencies))} (${s.notifyLatencies.length} of ${sent.sent})`);
    }
  } finally {
    await first.call('unlisten', undefined);
  }

  type Measured = { summary: Summary; delivered: number; expected: number; sent: PacedResult; droppedAtOpen: number };
  const measured: Partial<Record<TargetKind, Record<string, Measured>>> = {};
  const kinds: TargetKind[] = includePeers ? ['hub', 'ws', 'sio'] : ['hub'];
  for (const kind of kinds) {
    log(`latency: ${LABEL[kind]} (${n} clients)`);
    measured[kind] = await withServer(kind, async (server) => {
      const connect = await connectAll(server.target, n, dashboardsOf(1), 1);
      const { open, droppedAtOpen } = await settle(connect);
      if (droppedAtOpen > 0) log(`  ${droppedAtOpen} connection(s) dropped by the server right after opening (1006)`);
      // Warm-up: JIT, pools, prepared statements.
      await paced({ name: 'warm', rate: 50, connections: 1 }, 'insert', 0.5);
      await sleep(300);
      const out: Record<string, Measured> = {};
      for (const p of phases) {
        await resetAll(1);
        const sent = await paced(p, 'insert');
        const done = await waitDelivered(open * sent.sent, 2000);
        const s = await statsAll({ latencies: true, groups: true });
        if (!done.complete) log(`  ${LABEL[kind]} ${p.name}: incomplete, per connection ${JSON.stringify(s.groups)}, ${s.open} open, closes ${JSON.stringify(s.closeCodes)}`);
        out[p.name] = { summary: summarize(s.latencies), delivered: done.events, expected: open * sent.sent, sent, droppedAtOpen };
        log(`  ${LABEL[kind]} ${p.name}: ${pct(summarize(s.latencies))} (${s.latencies.length} samples)`);
      }
      return out;
    });
  }
  raw.latency = { clients: n, notify, measured };

  for (const p of phases) {
    const base = notify[p.name]?.summary;
    if (!base) continue;
    const caseName = p.name === 'idle' ? `idle (${p.rate} writes/s)` : `under load (${p.rate} writes/s)`;
    for (const kind of kinds) {
      const m = measured[kind]?.[p.name];
      if (!m) continue;
      const delta = m.summary.p50 - base.p50;
      const ratio = m.summary.p50 / base.p50;
      const lost = m.delivered < m.expected ? `, ${m.expected - m.delivered} lost` : '';
      rows.push({
        scenario: kind === 'hub' ? 'latency' : 'peers',
        case: kind === 'hub' ? `commit→client ${caseName}` : `latency ${caseName}: ${LABEL[kind]}`,
        figure: `${pct(m.summary)}${lost}`,
        value: m.summary.p50,
        baseline: `NOTIFY ${pct(base)}`,
        baselineValue: base.p50,
        ratio,
        ratioText: `${ratio.toFixed(1)}× (${delta >= 0 ? '+' : ''}${ms(delta)} ms)`,
        target: kind === 'hub' ? 'p50 ≤ NOTIFY p50 + 1 ms' : '—',
        status: kind === 'hub' ? status(delta <= 1 && m.delivered === m.expected) : 'info',
      });
    }
  }
}

async function metricValue(port: number, name: string): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/** CPU seconds (user + system) the process has used, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

async function memory(includeRate: boolean) {
  for (const n of sizes.memory) {
    const label = `${n.toLocaleString('en')} idle connections`;
    log(`memory / connection rate: ${label}`);
    type Mem = { before: number; after: number; perConn: number; open: number; droppedAtOpen: number; connect: Connected; idleCpu: number };
    const res: Partial<Record<'hub' | 'bare', Mem>> = {};
    for (const kind of ['hub', 'bare'] as const) {
      res[kind] = await withServer(kind, async (server) => {
        // Warm the upgrade path, then measure from a collected heap.
        await connectAll(server.target, 50, dashboardsOf(1), 0);
        await closeAll();
        await sleep(300);
        await server.gc();
        const before = await metricValue(server.port, 'process_resident_memory_bytes');
        const connect = await connectAll(server.target, n, dashboardsOf(1), 0, 64);
        const { open, droppedAtOpen } = await settle(connect);
        await sleep(800);
        const c0 = cpuSeconds(server.pid);
        await sleep(2000);
        const idleCpu = (cpuSeconds(server.pid) - c0) / 2;
        await server.gc();
        const after = await metricValue(server.port, 'process_resident_memory_bytes');
        const perConn = (after - before) / Math.max(1, open);
        log(`  ${LABEL[kind]}: ${(perConn / 1024).toFixed(2)} KB/connection, ${si(connect.rate)} upgrades/s, idle CPU ${(idleCpu * 100).toFixed(1)}%` +
          (droppedAtOpen > 0 ? `, ${droppedAtOpen} dropped at open` : ''));
        return { before, after, perConn, open, droppedAtOpen, connect, idleCpu };
      });
    }
    raw[`memory ${n}`] = res;
    const hub = res.hub;
    const bare = res.bare;
    if (!hub || !bare) continue;
    const kb = (b: number) => `${(b / 1024).toFixed(2)} KB/conn`;
    const failed = hub.connect.failed > 0 ? ` (${hub.connect.failed} failed)` : '';
    rows.push({
      scenario: 'memory',
      case: label,
      figure: `${kb(hub.perConn)}${failed}`,
      value: hub.perConn,
      baseline: `bare uWS ${kb(bare.perConn)}`,
      baselineValue: bare.perConn,
      // RSS moves in pages: a tiny run may see the bare server grow by less than one per socket.
      ratio: hub.perConn / Math.max(bare.perConn, 64),
      ratioText: `${(hub.perConn / Math.max(bare.perConn, 64)).toFixed(1)}×`,
      target: '≤ 4 KB per connection',
      status: status(hub.perConn <= 4096 && hub.connect.failed === 0),
    });
    if (includeRate) {
      rows.push({
        scenario: 'connection-rate',
        case: `${n.toLocaleString('en')} authenticated upgrades`,
        figure: `${si(hub.connect.rate)} upgrades/s${failed}`,
        value: hub.connect.rate,
        baseline: `bare uWS ${si(bare.connect.rate)}/s (no auth)`,
        baselineValue: bare.connect.rate,
        ratio: hub.connect.rate / bare.connect.rate,
        ratioText: `${(hub.connect.rate / bare.connect.rate).toFixed(2)}×`,
        target: '—',
        status: 'info',
      });
    }
  }
}

/**
 * A copy of the hub's capture function without its pg_notify, installed (disabled) beside
 * the real triggers in the bench database only: it tells the cost of the outbox INSERT from
 * the cost of NOTIFY. Undefined if the function no longer has that line.
 */
async function installQuietCapture(url: string): Promise<boolean> {
  const def = await writer.call('sql', { url, text: `SELECT pg_get_functiondef('hub.capture'::regproc) AS d` });
  const text = String((def.rows[0] as { d?: string } | undefined)?.d ?? '');
  const quiet = text.replace(/PERFORM\s+pg_notify\([^;]*\);/, 'NULL;').replace(/FUNCTION\s+hub\.capture\(\)/, 'FUNCTION public.bench_capture_quiet()');
  if (quiet === text || !quiet.includes('bench_capture_quiet')) return false;
  const args = await writer.call('sql', {
    url,
    text: `SELECT pg_get_triggerdef(oid) AS d FROM pg_trigger WHERE tgrelid = 'guarantees'::regclass AND tgname = 'hub_capture_insert'`,
  });
  const trig = String((args.rows[0] as { d?: string } | undefined)?.d ?? '');
  const quietTrigger = trig.replace('hub_capture_insert', 'bench_quiet_insert').replace(/hub\.capture\(/, 'public.bench_capture_quiet(');
  if (!quietTrigger.includes('bench_capture_quiet')) return false;
  await writer.call('sql', { url, text: quiet });
  await writer.call('sql', { url, text: `${quietTrigger}; ALTER TABLE guarantees DISABLE TRIGGER bench_quiet_insert` });
  return true;
}

async function writeCost() {
  const w = sizes.write;
  const url = dbUrl();
  // Rows go to election 20, which no scenario's dashboards watch.
  const where = { election: SEED.elections, firstCommittee: committeeId(SEED.elections, 1, SEED.committeesPer), committees: SEED.committeesPer };
  // NOTIFY does its real work only with a listener: one LISTENs on the hub's channel.
  const first = clients[0];
  if (!first) throw new Error('no client worker');
  await first.call('listen', { url, channel: 'hub_outbox' });
  const quietOk = await installQuietCapture(url);
  type State = 'on' | 'quiet' | 'off';
  const capture = async (state: State) => {
    const text =
      state === 'on'
        ? 'ALTER TABLE guarantees ENABLE TRIGGER USER' + (quietOk ? '; ALTER TABLE guarantees DISABLE TRIGGER bench_quiet_insert' : '')
        : 'ALTER TABLE guarantees DISABLE TRIGGER USER' + (state === 'quiet' ? '; ALTER TABLE guarantees ENABLE TRIGGER bench_quiet_insert' : '');
    await writer.call('sql', { url, text });
  };
  const states: State[] = quietOk ? ['on', 'quiet', 'off'] : ['on', 'off'];
  const single: Record<State, { inserts: number; seconds: number }> = { on: { inserts: 0, seconds: 0 }, quiet: { inserts: 0, seconds: 0 }, off: { inserts: 0, seconds: 0 } };
  const statement: { on: number[]; off: number[] } = { on: [], off: [] };
  try {
    log(`write cost: single-row inserts, 4 writers, ${w.rounds}× ${w.seconds} s per state (${states.join(', ')})`);
    await capture('on');
    await writer.call('flatOut', { url, writers: 4, seconds: 0.5, ...where }); // warm-up
    for (let r = 0; r < w.rounds; r++) {
      for (const state of states) {
        await capture(state);
        const res = await writer.call('flatOut', { url, writers: 4, seconds: w.seconds, ...where });
        single[state].inserts += res.inserts;
        single[state].seconds += res.seconds;
      }
    }
    log(`write cost: ${w.statementRows.toLocaleString('en')}-row statement, ${w.statementRounds}× each way`);
    for (let r = 0; r < w.statementRounds; r++) {
      for (const state of ['on', 'off'] as const) {
        await capture(state);
        const res = await writer.call('statement', { url, rows: w.statementRows, ...where });
        statement[state].push(res.ms);
      }
    }
  } finally {
    await capture('on');
    await first.call('unlisten', undefined);
  }
  const rate = (s: State) => single[s].inserts / single[s].seconds;
  const onRate = rate('on');
  const offRate = rate('off');
  log(`  single-row: on ${si(onRate)}/s, ${quietOk ? `without NOTIFY ${si(rate('quiet'))}/s, ` : ''}off ${si(offRate)}/s; ` +
    `statement: on ${ms(median(statement.on))} ms, off ${ms(median(statement.off))} ms`);
  raw['write-cost'] = { single, statement, onRate, offRate, ...(quietOk ? { quietRate: rate('quiet') } : {}) };
  rows.push({
    scenario: 'write-cost',
    case: 'single-row inserts, 4 writers',
    figure: `capture on ${si(onRate)} inserts/s`,
    value: onRate,
    baseline: `capture off ${si(offRate)}/s`,
    baselineValue: offRate,
    ratio: onRate / offRate,
    ratioText: `${(onRate / offRate).toFixed(2)}×`,
    target: '≥ 0.8× capture off',
    status: status(onRate / offRate >= 0.8),
  });
  if (quietOk) {
    const q = rate('quiet');
    rows.push({
      scenario: 'write-cost',
      case: 'single-row, capture minus its NOTIFY (diagnosis)',
      figure: `outbox only ${si(q)} inserts/s`,
      value: q,
      baseline: `capture off ${si(offRate)}/s`,
      baselineValue: offRate,
      ratio: q / offRate,
      ratioText: `${(q / offRate).toFixed(2)}×`,
      target: '—',
      status: 'info',
    });
  }
  const on = median(statement.on);
  const off = median(statement.off);
  rows.push({
    scenario: 'write-cost',
    case: `one ${w.statementRows.toLocaleString('en')}-row INSERT … SELECT`,
    figure: `capture on ${ms(on)} ms`,
    value: on,
    baseline: `capture off ${ms(off)} ms`,
    baselineValue: off,
    ratio: off / on,
    ratioText: `${(off / on).toFixed(2)}× speed`,
    target: '—',
    status: 'info',
  });
}

async function electionNight() {
  const en = sizes.electionNight;
  if (!en) return;
  const dashboards: Dashboard[] = [];
  const spots: Spot[] = [];
  for (let e = 1; e <= en.elections; e++) {
    for (let k = 1; k <= en.committeesPer; k++) {
      const c = committeeId(e, k, SEED.committeesPer);
      spots.push({ election: e, committee: c });
      for (let d = 0; d < en.committeeDashboards; d++) dashboards.push({ committees: [c], group: `c${c}` });
    }
    for (let d = 0; d < en.electionDashboards; d++) dashboards.push({ elections: [e], group: `e${e}` });
  }
  // Spread writes over committees in a shuffled but fixed order.
  for (let i = spots.length - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1);
    [spots[i], spots[j]] = [spots[j] as Spot, spots[i] as Spot];
  }
  const n = dashboards.length;
  log(`election night: ${n.toLocaleString('en')} dashboards, ${en.rate} writes/s for ${en.seconds} s`);
  const result = await withServer('hub', async (server) => {
    // Interleave so each group's dashboards land on every worker.
    const connect = await connectAll(server.target, n, dashboards, 20, 64);
    log(`  connected ${connect.opened} in ${connect.seconds.toFixed(1)} s`);
    await resetAll(20);
    const writing = writer.call('paced', { url: dbUrl(), rate: en.rate, seconds: en.seconds, connections: 4, kind: 'insert', spots });
    const poll = setInterval(() => {
      void statsAll({ latencies: false, groups: false }).then(
        (s) => log(`  … ${si(s.events)} deliveries, ${s.open} open, ${s.closed} closed`),
        () => undefined,
      );
    }, 30_000);
    let sent: PacedResult;
    try {
      sent = await writing;
    } finally {
      clearInterval(poll);
    }
    const expectedOf = (group: string) => (group.startsWith('c') ? (sent.perCommittee[group.slice(1)] ?? 0) : (sent.perElection[group.slice(1)] ?? 0));
    let expected = 0;
    for (const d of dashboards) expected += expectedOf(d.group);
    await waitDelivered(expected, 10_000);
    const s = await statsAll({ latencies: true, groups: true });
    let lost = 0;
    let short = 0;
    for (const [g, st] of Object.entries(s.groups)) {
      const want = expectedOf(g);
      lost += want * st.conns - st.total;
      if (st.min < want) short += 1;
    }
    return { connect, sent, expected, delivered: s.events, lost, groupsShort: short, closed: s.closed, closeCodes: s.closeCodes, latency: summarize(s.latencies) };
  });
  raw['election-night'] = result;
  log(`  ${pct(result.latency)}; ${si(result.delivered)} of ${si(result.expected)} delivered, ${result.closed} closed`);
  const ratio = result.delivered / Math.max(1, result.expected);
  rows.push({
    scenario: 'election-night',
    case: `${n.toLocaleString('en')} dashboards, ${en.rate} writes/s, ${en.seconds / 60} min`,
    figure: `${pct(result.latency)}, ${result.lost} lost`,
    value: result.latency.p99,
    baseline: `${si(result.expected)} deliveries expected`,
    baselineValue: result.expected,
    ratio,
    ratioText: `${ratio.toFixed(4)} delivered`,
    target: 'zero loss (p99 reported)',
    status: status(result.lost === 0 && result.closed === 0),
  });
}

// ---- main --------------------------------------------------------------------------------

let cleaning: Promise<void> | undefined;
const cleanup = () =>
  (cleaning ??= (async () => {
    await killAll(3000);
    if (db) await db.drop().catch((err: unknown) => log(`dropping ${db?.name} failed: ${(err as Error).message}`));
  })());

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

async function main(): Promise<number> {
  mkdirSync(LOG_DIR, { recursive: true });
  log(`mode ${mode}; database ${ADMIN_URL.replace(/\/\/[^@/]*@/, '//')}`);
  db = await createBenchDatabase(ADMIN_URL);
  await seed(db.url, SEED.elections, SEED.committeesPer);
  const pgVersion = await serverVersion(db.url);
  const [w, ...cs] = await Promise.all([
    spawnTs<WriterApi>('writer', 'bench/workers/writer.ts', { logDir: LOG_DIR }),
    ...Array.from({ length: sizes.workers }, (_, k) => spawnTs<ClientApi>(`clients-${k}`, 'bench/workers/clients.ts', { logDir: LOG_DIR })),
  ]);
  writer = (w as { child: Child<WriterApi> }).child;
  clients = cs.map((c) => (c as { child: Child<ClientApi> }).child);

  const run = async (name: string, fn: () => Promise<void>) => {
    const t = wallNow();
    await fn();
    timings[name] = Math.round((wallNow() - t) / 100) / 10;
  };
  if (wanted('write-cost')) await run('write-cost', writeCost);
  if (wanted('latency') || wanted('peers')) await run('latency', () => latency(wanted('peers')));
  if (wanted('fan-out') || wanted('peers')) await run('fan-out', () => fanout(wanted('peers'), wanted('fan-out')));
  if (wanted('memory') || wanted('connection-rate')) await run('memory', () => memory(wanted('connection-rate')));
  if (wanted('election-night') && sizes.electionNight) await run('election-night', electionNight);

  const seconds = Math.round((wallNow() - T0) / 100) / 10;
  const machine = {
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? '?',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: pgVersion,
  };
  const table = renderTable(rows);
  console.log(`\nelection-hub benchmarks — mode ${mode}, ${new Date().toISOString()}`);
  console.log(`machine: ${machine.cpus} × ${machine.cpu}, ${machine.memoryGiB} GiB, ${machine.kernel}, Node ${machine.node}, ${machine.postgres}\n`);
  console.log(table);
  const misses = rows.filter((r) => r.status === 'MISS').length;
  console.log(`\n${rows.filter((r) => r.status === 'PASS').length} PASS, ${misses} MISS, ${rows.filter((r) => r.status === 'info').length} info; ` +
    `scenario times: ${Object.entries(timings).map(([k, v]) => `${k} ${v} s`).join(', ')}; total ${seconds} s`);
  const out = flags.out ?? join(RESULTS, 'latest.json');
  const json = JSON.stringify({ mode, startedAt: new Date(Date.now() - seconds * 1000).toISOString(), seconds, timings, machine, sizes, rows, raw }, null, 2);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(out, json);
  if (!flags.out) writeFileSync(join(RESULTS, `latest-${mode}.json`), json);
  console.log(`results: ${out}`);
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  log(`failed: ${(err as Error).stack ?? String(err)}`);
  code = 1;
} finally {
  await cleanup();
}
process.exit(code);
