/*
 * `npm run bench [-- --quick | --smoke] [--only a,b] [--out file.json] [--profile] [--memory N,M]`
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
import { RESULTS, fdLimitOf, killAll, spawnTs } from './lib/procs.ts';
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
  /** Timed bursts per server (hub and bare uWS); the median is reported. */
  fanoutReps: number;
  latency: { clients: number; idleRate: number; loadRate: number; seconds: number; warmSeconds: number; readOnlyReference: boolean };
  /** How long a delivery count may stand still before the rest is counted as lost. */
  stallMs: number;
  idleCpuSeconds: number;
  memory: number[];
  /** Single-row states run with 4 writers; `writers` adds capture on/off (and a reader asleep) at other counts. */
  write: { seconds: number; rounds: number; statementRows: number; statementRounds: number; writers: number[] };
  electionNight?: { elections: number; committeesPer: number; committeeDashboards: number; electionDashboards: number; rate: number; seconds: number };
};

const SIZES: Record<Mode, Sizes> = {
  smoke: {
    workers: 2,
    fanout: [{ clients: 20, events: 100 }],
    fanoutReps: 1,
    latency: { clients: 4, idleRate: 50, loadRate: 500, seconds: 0.6, warmSeconds: 0.2, readOnlyReference: false },
    stallMs: 1000,
    idleCpuSeconds: 0.5,
    memory: [200],
    write: { seconds: 1, rounds: 1, statementRows: 2000, statementRounds: 1, writers: [] },
  },
  quick: {
    workers: 4,
    fanout: [{ clients: 1000, events: 1000 }],
    fanoutReps: 3,
    latency: { clients: 20, idleRate: 50, loadRate: 500, seconds: 2.5, warmSeconds: 0.5, readOnlyReference: true },
    stallMs: 2000,
    idleCpuSeconds: 2,
    memory: [2000],
    write: { seconds: 1, rounds: 4, statementRows: 20_000, statementRounds: 3, writers: [1, 8] },
  },
  full: {
    workers: 4,
    fanout: [
      { clients: 1000, events: 2000 },
      { clients: 10_000, events: 500 },
    ],
    fanoutReps: 5,
    latency: { clients: 100, idleRate: 50, loadRate: 500, seconds: 10, warmSeconds: 1, readOnlyReference: true },
    stallMs: 5000,
    idleCpuSeconds: 3,
    memory: [10_000, 50_000],
    write: { seconds: 2, rounds: 5, statementRows: 20_000, statementRounds: 5, writers: [1, 8] },
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
    memory: { type: 'string' },
  },
  strict: true,
});
const mode: Mode = flags.smoke ? 'smoke' : flags.quick ? 'quick' : 'full';
const sizes: Sizes = { ...SIZES[mode], ...(flags.memory ? { memory: flags.memory.split(',').map(Number) } : {}) };
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
const LOAD_AT_START = os.loadavg();

// ---- processes ---------------------------------------------------------------------------

let db: BenchDatabase | undefined;
let writer: Child<WriterApi>;
let clients: Array<Child<ClientApi>> = [];

const dbUrl = () => {
  if (!db) throw new Error('no database');
  return db.url;
};

type Server = {
  kind: TargetKind;
  port: number;
  /** Where /metrics is: the hub's own metrics listener, the peers' one port. */
  metricsPort: number;
  pid: number;
  target: Target;
  stop(): Promise<void>;
  gc(): Promise<void>;
  memory(): Promise<NodeJS.MemoryUsage | undefined>;
  /** Open-file limit the server process got (it bounds its connections). */
  fdLimit: number;
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
      env: { DATABASE_URL: db.url, JWT_SECRET: SECRET, PORT: '0', HOST: '127.0.0.1', METRICS_PORT: '0', LOG_LEVEL: process.env.BENCH_HUB_LOG ?? 'info', REDIS_URL: '' },
      nodeArgs: ['--expose-gc', ...(flags.profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : [])],
    });
    const { port, metricsPort, pid } = ready as { port: number; metricsPort: number; pid: number };
    // Upgrades need the listener connected and the reader started: wait for /ready.
    const deadline = Date.now() + 15_000;
    while ((await fetch(`http://127.0.0.1:${port}/ready`).then((r) => r.status, () => 0)) !== 200) {
      if (Date.now() > deadline) throw new Error('hub never became ready');
      await sleep(50);
    }
    return {
      kind,
      port,
      metricsPort,
      pid,
      target: { kind, host: '127.0.0.1', port },
      stop: async () => {
        await child.call('stop', undefined, 15_000).catch(() => undefined);
        await child.kill(5000);
      },
      gc: async () => void (await child.call('gc', undefined)),
      memory: () => child.call('memory', undefined),
      fdLimit: fdLimitOf(pid),
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
    metricsPort: port,
    pid,
    target: { kind, host: '127.0.0.1', port },
    stop: async () => {
      await child.call('stop', undefined, 15_000).catch(() => undefined);
      await child.kill(5000);
    },
    gc: async () => void (kind === 'bare' ? await child.call('gc', undefined) : undefined),
    memory: async () => (kind === 'bare' ? child.call('memory', undefined) : undefined),
    fdLimit: fdLimitOf(pid),
    publish: async (count, size) => void (await child.call('publish', { count, size, batch: 1000 })),
  };
}

/**
 * Starts a server, runs `fn`, and always closes the clients and stops the server. Before the
 * start, statistics are refreshed (the steady state autovacuum keeps; the stale case is
 * reported apart in docs/BENCHMARKS.md). The peers get the index their `id > $1` poll needs,
 * only while they run (the hub reads by the primary key and does not need it).
 */
async function withServer<T>(kind: TargetKind, fn: (s: Server) => Promise<T>): Promise<T> {
  const url = dbUrl();
  const peer = kind === 'ws' || kind === 'sio';
  await writer.call('sql', { url, text: `ANALYZE${peer ? '; CREATE INDEX IF NOT EXISTS bench_outbox_id ON hub.outbox (id)' : ''}` });
  const s = await startServer(kind);
  try {
    return await fn(s);
  } finally {
    await closeAll();
    await s.stop();
    if (peer) await writer.call('sql', { url, text: 'DROP INDEX IF EXISTS hub.bench_outbox_id' });
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
async function settle(connect: Connected, openBefore = 0): Promise<{ open: number; droppedAtOpen: number }> {
  await sleep(200);
  const s = await statsAll({ latencies: false, groups: false });
  const open = s.open - openBefore;
  return { open, droppedAtOpen: connect.opened - open };
}

const openNow = async () => (await statsAll({ latencies: false, groups: false })).open;

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

/** Sockets a server can hold under its open-file limit (a margin for its database, log and listen fds). */
const capacityOf = (server: Server) => (Number.isFinite(server.fdLimit) ? server.fdLimit - 500 : Number.POSITIVE_INFINITY);
let fdCapped = false;
const capNote = (server: Server) =>
  `capped by the ${server.fdLimit.toLocaleString('en')} open-file limit: raise it with prlimit --nofile or LimitNOFILE (needs CAP_SYS_RESOURCE)`;

const dashboardsOf = (election: number): Dashboard[] => [{ elections: [election], group: `e${election}` }];
const e1Spots: Spot[] = E1_COMMITTEES.map((c) => ({ election: 1, committee: c }));

// ---- results -----------------------------------------------------------------------------

const rows: Row[] = [];
const raw: Record<string, unknown> = {};
const timings: Record<string, number> = {};

const pct = (s: Summary) => `p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms`;
const status = (ok: boolean): Row['status'] => (ok ? 'PASS' : 'MISS');

// ---- scenarios ---------------------------------------------------------------------------

type Burst = { rate: number; delivered: number; expected: number; seconds: number; frameBytes: number; latency: Summary; complete: boolean };
type FanoutResult = { bursts: Burst[]; rate: number; delivered: number; expected: number; frameBytes: number; open: number; droppedAtOpen: number; connect: Connected };

/** A server with `n` clients connected, warmed up, ready for timed bursts. */
type Rig = { kind: TargetKind; server: Server; open: number; droppedAtOpen: number; connect: Connected; burst(events: number, frameBytes: number): Promise<Burst> };

async function rig(server: Server, n: number, stallMs = Math.max(sizes.stallMs, 5000)): Promise<Rig> {
  const openBefore = await openNow(); // another rig may hold connections on the same workers
  const connect = await connectAll(server.target, n, dashboardsOf(1), 0);
  const { open, droppedAtOpen } = await settle(connect, openBefore);
  const fire = async (count: number, frameBytes: number) => {
    if (server.kind === 'bare') await server.publish(count, frameBytes);
    else await writer.call('bulk', { url: dbUrl(), total: count, batch: count, election: 1, firstCommittee: 1, committees: SEED.committeesPer });
  };
  const r: Rig = {
    kind: server.kind,
    server,
    open,
    droppedAtOpen,
    connect,
    /** One burst of `events`, timed at the clients from first to last delivery. */
    async burst(events, frameBytes) {
      await resetAll(100);
      await fire(events, frameBytes);
      const done = await waitDelivered(open * events, stallMs);
      const s = await statsAll({ latencies: true, groups: false });
      await sleep(300); // the hub's dashboard_update (debounced 250 ms) goes out before the next burst
      const seconds = (s.last - s.first) / 1000;
      return {
        rate: s.events / seconds,
        delivered: s.events,
        expected: open * events,
        seconds,
        frameBytes: s.bytes / Math.max(1, s.events),
        latency: summarize(s.latencies),
        complete: done.complete,
      };
    },
  };
  await r.burst(Math.max(20, Math.min(200, Math.round(200_000 / n))), 300); // warm-up: JIT, buffers, plans
  return r;
}

const resultOf = (r: Rig, bursts: Burst[]): FanoutResult => {
  const mid = [...bursts].sort((a, b) => a.rate - b.rate)[Math.floor(bursts.length / 2)] as Burst;
  return {
    bursts,
    rate: mid.rate,
    delivered: bursts.reduce((n, b) => n + b.delivered, 0),
    expected: bursts.reduce((n, b) => n + b.expected, 0),
    frameBytes: mid.frameBytes,
    open: r.open,
    droppedAtOpen: r.droppedAtOpen,
    connect: r.connect,
  };
};

async function fanout(includePeers: boolean, includeBase: boolean) {
  for (const { clients: n, events } of sizes.fanout) {
    const label = `${n.toLocaleString('en')} clients × ${events.toLocaleString('en')} events`;
    log(`fan-out: ${label}, ${sizes.fanoutReps} bursts each${includeBase ? ', hub and bare uWS interleaved' : ''}`);
    const results: Partial<Record<TargetKind, FanoutResult>> = {};
    // The hub and bare uWS hold their clients side by side and take turns: drift on this
    // shared machine hits both alike. The median burst of each is reported.
    await withServer('hub', async (hubServer) => {
      const hubRig = await rig(hubServer, n);
      const hubBursts: Burst[] = [];
      const bareBursts: Burst[] = [];
      const bareServer = includeBase ? await startServer('bare') : undefined;
      try {
        const bareRig = bareServer ? await rig(bareServer, n) : undefined;
        for (let i = 0; i < sizes.fanoutReps; i++) {
          const h = await hubRig.burst(events, 0);
          hubBursts.push(h);
          log(`  hub ${si(h.rate)} deliveries/s (${si(h.delivered)} of ${si(h.expected)}, ${h.frameBytes.toFixed(0)} B frames, ${h.seconds.toFixed(2)} s)`);
          if (!bareRig) continue;
          const b = await bareRig.burst(events, Math.round(h.frameBytes));
          bareBursts.push(b);
          log(`  bare uWS ${si(b.rate)} deliveries/s (${si(b.delivered)} of ${si(b.expected)}, ${b.seconds.toFixed(2)} s)`);
        }
        results.hub = resultOf(hubRig, hubBursts);
        if (bareRig) results.bare = resultOf(bareRig, bareBursts);
      } finally {
        await closeAll();
        await bareServer?.stop();
      }
    });
    const hub = results.hub;
    if (!hub) continue;
    if (includePeers) {
      for (const kind of ['ws', 'sio'] as const) {
        results[kind] = await withServer(kind, async (server) => {
          // socket.io emits a whole page to every socket before its event loop lets engine.io
          // write the next packet: deliveries pause for many seconds at 10 000 clients.
          const r = await rig(server, n, 60_000);
          const b = await r.burst(events, 0);
          log(`  ${LABEL[kind]} ${si(b.rate)} deliveries/s (${si(b.delivered)} of ${si(b.expected)}, ${b.seconds.toFixed(2)} s)`);
          return resultOf(r, [b]);
        });
      }
    }
    raw[`fan-out ${n}`] = results;
    const lost = (r: FanoutResult) => (r.delivered < r.expected ? ` (${si(r.expected - r.delivered)} lost)` : '');
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
      ...(sizes.latency.readOnlyReference ? [['idle, read-only NOTIFY', phases[0] as Phase, 'notify-only'] as [string, Phase, 'notify-only']] : []),
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
      await paced({ name: 'warm', rate: 50, connections: 1 }, 'insert', sizes.latency.warmSeconds);
      await sleep(300);
      const out: Record<string, Measured> = {};
      for (const p of phases) {
        await resetAll(1);
        const sent = await paced(p, 'insert');
        const done = await waitDelivered(open * sent.sent, sizes.stallMs);
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
  for (const wantN of sizes.memory) {
    let n = wantN;
    let capped = '';
    log(`memory / connection rate: ${wantN.toLocaleString('en')} idle connections (+ warm-up ${Math.min(wantN, 2000).toLocaleString('en')})`);
    type Mem = {
      before: number;
      after: number;
      perConn: number;
      heapPerConn: number;
      heapBefore: NodeJS.MemoryUsage | undefined;
      heapAfter: NodeJS.MemoryUsage | undefined;
      open: number;
      droppedAtOpen: number;
      connect: Connected;
      cpuPerUpgradeUs: number;
      idleCpu: number;
      warm: { n: number; open: number; rss0: number; perConnWithOneTime: number; connect: Connected };
    };
    const res: Partial<Record<'hub' | 'bare', Mem>> = {};
    for (const kind of ['hub', 'bare'] as const) {
      res[kind] = await withServer(kind, async (server) => {
        const room = capacityOf(server) - Math.min(wantN, 2000);
        if (n > room) {
          n = Math.max(0, Math.floor(room / 1000) * 1000);
          capped = capNote(server);
          fdCapped = true;
          log(`  ${wantN.toLocaleString('en')} + warm-up do not fit: measuring ${n.toLocaleString('en')} (${capped})`);
        }
        // The first few thousand upgrades after start grow the process by a one-time ~20 MB
        // (measured: a second batch opened on top costs ~1.5 KB each; memory freed by closing a
        // batch is reused, so close-and-reopen would under-count). So: a warm-up batch of up to
        // 2 000 stays open, and the figure is the growth from the next n, from collected heaps.
        const warmN = Math.min(wantN, 2000);
        await server.gc();
        const rss0 = await metricValue(server.metricsPort, 'process_resident_memory_bytes');
        const warm = await connectAll(server.target, warmN, dashboardsOf(1), 0, 64);
        const warmOpen = (await settle(warm)).open;
        await server.gc();
        const before = await metricValue(server.metricsPort, 'process_resident_memory_bytes');
        const heapBefore = await server.memory();
        const cpu0 = cpuSeconds(server.pid);
        const connect = await connectAll(server.target, n, dashboardsOf(1), 0, 64);
        const cpuPerUpgradeUs = ((cpuSeconds(server.pid) - cpu0) / Math.max(1, connect.opened)) * 1e6;
        const { open, droppedAtOpen } = await settle(connect, warmOpen);
        await sleep(500);
        const c0 = cpuSeconds(server.pid);
        await sleep(sizes.idleCpuSeconds * 1000);
        const idleCpu = (cpuSeconds(server.pid) - c0) / sizes.idleCpuSeconds;
        await server.gc();
        const after = await metricValue(server.metricsPort, 'process_resident_memory_bytes');
        const heapAfter = await server.memory();
        const perConn = (after - before) / Math.max(1, open);
        const coldPerConn = (after - rss0) / Math.max(1, open + warmOpen);
        const heapPerConn = heapBefore && heapAfter ? (heapAfter.heapUsed - heapBefore.heapUsed) / Math.max(1, open) : Number.NaN;
        log(`  ${LABEL[kind]}: ${(perConn / 1024).toFixed(2)} KB/connection RSS (JS heap ${(heapPerConn / 1024).toFixed(2)} KB; ` +
          `${(coldPerConn / 1024).toFixed(2)} KB with the one-time growth), ${si(connect.rate)} upgrades/s (first ${warmN}: ${si(warm.rate)}/s), ` +
          `${cpuPerUpgradeUs.toFixed(0)} µs CPU per upgrade, idle CPU ${(idleCpu * 100).toFixed(1)}% with ${open + warmOpen} open` +
          (droppedAtOpen > 0 ? `, ${droppedAtOpen} dropped at open` : ''));
        return { before, after, perConn, heapPerConn, heapBefore, heapAfter, open, droppedAtOpen, connect, cpuPerUpgradeUs, idleCpu, warm: { n: warmN, open: warmOpen, rss0, perConnWithOneTime: coldPerConn, connect: warm } };
      });
    }
    const label = `${n.toLocaleString('en')} idle connections (+ warm-up ${Math.min(wantN, 2000).toLocaleString('en')})${capped ? ` — asked ${wantN.toLocaleString('en')}, ${capped}` : ''}`;
    raw[`memory ${wantN}`] = { ...res, measured: n, ...(capped ? { capped } : {}) };
    const hub = res.hub;
    const bare = res.bare;
    if (!hub || !bare) continue;
    const kb = (b: number) => `${(b / 1024).toFixed(2)} KB/conn`;
    const failed = hub.connect.failed > 0 ? ` (${hub.connect.failed} failed)` : '';
    rows.push({
      scenario: 'memory',
      case: label,
      figure: `${kb(hub.perConn)}${failed} (${kb(hub.warm.perConnWithOneTime)} with one-time growth)`,
      value: hub.perConn,
      // At a few thousand sockets bare uWS may grow by less than RSS can resolve: then the
      // ratio is a lower bound against 0.25 KB.
      ...(bare.perConn >= 256
        ? { baseline: `bare uWS ${kb(bare.perConn)}`, baselineValue: bare.perConn, ratio: hub.perConn / bare.perConn, ratioText: `${(hub.perConn / bare.perConn).toFixed(1)}×` }
        : {
            baseline: `bare uWS < 0.25 KB/conn (${kb(bare.perConn)}: below RSS resolution)`,
            baselineValue: bare.perConn,
            ratio: hub.perConn / 256,
            ratioText: `≥ ${(hub.perConn / 256).toFixed(1)}×`,
          }),
      target: '≤ 4 KB per connection',
      // Judged on memory alone; a socket uWS dropped at open is shown in the figure, not held against it.
      status: status(hub.perConn <= 4096),
    });
    if (includeRate) {
      rows.push({
        scenario: 'connection-rate',
        case: `${n.toLocaleString('en')} authenticated upgrades${capped ? ' (capped, see memory)' : ''}`,
        figure: `${si(hub.connect.rate)} upgrades/s${failed}, ${hub.cpuPerUpgradeUs.toFixed(0)} µs CPU each`,
        value: hub.connect.rate,
        baseline: `bare uWS ${si(bare.connect.rate)}/s, ${bare.cpuPerUpgradeUs.toFixed(0)} µs (no auth)`,
        baselineValue: bare.connect.rate,
        ratio: hub.connect.rate / bare.connect.rate,
        ratioText: `${(hub.connect.rate / bare.connect.rate).toFixed(2)}×`,
        target: '—',
        status: 'info',
      });
    }
  }
}

/*
 * Write cost (sql/005_capture.sql). Capture NOTIFYs only while some hub reader has declared
 * itself asleep, so a write pays one of two prices: the capture alone (every reader busy, or
 * no hub), or the capture plus a NOTIFY at commit (a reader asleep: an idle hub). Measured
 * apart: `on` with nobody asleep, `asleep` with a standing declaration (hub.sleep with a long
 * lease: every commit NOTIFYs, as every one did before 005), `hub` with a real hub process
 * reading the rows as they come (its readers go busy and stop the NOTIFYs; on this 2-core
 * machine the hub's own CPU comes out of the writers'), and `off` (triggers disabled).
 */
type WriteState = 'on' | 'asleep' | 'hub' | 'off';
const STANDING_SLEEPER = 'bench-standing-sleeper';

async function writeCost() {
  const w = sizes.write;
  const url = dbUrl();
  // Rows go to election 20, which no scenario's dashboards watch.
  const where = { election: SEED.elections, firstCommittee: committeeId(SEED.elections, 1, SEED.committeesPer), committees: SEED.committeesPer };
  // NOTIFY does its real work only with a listener: one LISTENs on the hub's channel.
  const first = clients[0];
  if (!first) throw new Error('no client worker');
  await first.call('listen', { url, channel: 'hub_outbox' });
  const sql = (text: string) => writer.call('sql', { url, text });
  const set = async (state: WriteState) => {
    await sql(`ALTER TABLE guarantees ${state === 'off' ? 'DISABLE' : 'ENABLE'} TRIGGER USER`);
    // Nobody asleep, or the standing sleeper (its own transaction: hub.sleep insists); a hub's
    // readers declare themselves as they go.
    if (state !== 'hub') await sql(`SELECT hub.awake(reader) FROM hub.sleepers`);
    if (state === 'asleep') await sql(`SELECT lapsed FROM hub.sleep('${STANDING_SLEEPER}', 600000)`);
    if (state === 'hub') await sql(`SELECT hub.awake('${STANDING_SLEEPER}')`);
  };
  type Tally = { inserts: number; seconds: number; cpuMs: number; notifies: number };
  const single = new Map<string, Tally>();
  const flat = async (state: WriteState, writers: number) => {
    await set(state);
    const run = async () => {
      await first.call('notifications', undefined);
      const r = await writer.call('flatOut', { url, writers, seconds: w.seconds, ...where });
      return { ...r, notifies: (await first.call('notifications', undefined)).n };
    };
    const r = await run();
    const key = `${state}/${writers}`;
    const t = single.get(key) ?? { inserts: 0, seconds: 0, cpuMs: 0, notifies: 0 };
    single.set(key, { inserts: t.inserts + r.inserts, seconds: t.seconds + r.seconds, cpuMs: t.cpuMs + (r.backendCpuMs ?? Number.NaN), notifies: t.notifies + r.notifies });
  };
  const statement: { on: number[]; off: number[] } = { on: [], off: [] };
  const main: WriteState[] = ['on', 'asleep', 'off'];
  try {
    log(`write cost: single-row inserts, 4 writers, ${w.rounds}× ${w.seconds} s per state (${main.join(', ')}), then with a hub`);
    await set('on');
    await writer.call('flatOut', { url, writers: 4, seconds: 0.5, ...where }); // warm-up
    for (let r = 0; r < w.rounds; r++) for (const state of main) await flat(state, 4);
    // One hub for all its rounds, warmed up first: its readers' steady state, not their start.
    await withServer('hub', async () => {
      await set('hub');
      await writer.call('flatOut', { url, writers: 4, seconds: 0.5, ...where });
      for (let r = 0; r < w.rounds; r++) await flat('hub', 4);
    });
    for (const n of w.writers) {
      log(`write cost: single-row inserts, ${n} writer${n === 1 ? '' : 's'}, ${w.rounds}× ${w.seconds} s per state (on, asleep, off)`);
      for (let r = 0; r < w.rounds; r++) for (const state of ['on', 'asleep', 'off'] as const) await flat(state, n);
    }
    log(`write cost: ${w.statementRows.toLocaleString('en')}-row statement, ${w.statementRounds}× each way`);
    for (let r = 0; r < w.statementRounds; r++) {
      for (const state of ['on', 'off'] as const) {
        await set(state);
        const res = await writer.call('statement', { url, rows: w.statementRows, ...where });
        statement[state].push(res.ms);
      }
    }
  } finally {
    await set('on');
    await first.call('unlisten', undefined);
  }
  const rate = (state: WriteState, n: number) => {
    const t = single.get(`${state}/${n}`);
    return t ? t.inserts / t.seconds : Number.NaN;
  };
  /** CPU of the writers' backends per insert, in µs (NaN when PostgreSQL runs elsewhere). */
  const cpuUs = (state: WriteState, n: number) => {
    const t = single.get(`${state}/${n}`);
    return t ? (t.cpuMs * 1000) / t.inserts : Number.NaN;
  };
  const notifyShare = (state: WriteState, n: number) => {
    const t = single.get(`${state}/${n}`);
    return t ? t.notifies / t.inserts : Number.NaN;
  };
  const on = median(statement.on);
  const off = median(statement.off);
  log(`  single-row, 4 writers: on ${si(rate('on', 4))}/s, a reader asleep ${si(rate('asleep', 4))}/s, with a hub ${si(rate('hub', 4))}/s, off ${si(rate('off', 4))}/s; ` +
    `statement: on ${ms(on)} ms, off ${ms(off)} ms`);
  raw['write-cost'] = {
    single: Object.fromEntries(single),
    statement,
    rates: Object.fromEntries([...single].map(([k, t]) => [k, t.inserts / t.seconds])),
    backendCpuUsPerInsert: Object.fromEntries([...single].map(([k, t]) => [k, (t.cpuMs * 1000) / t.inserts])),
    notifiesPerInsert: Object.fromEntries([...single].map(([k, t]) => [k, t.notifies / t.inserts])),
  };
  const ratioRow = (n: number, state: WriteState, label: string, target?: number) => {
    const value = rate(state, n);
    const base = rate('off', n);
    if (!Number.isFinite(value) || !Number.isFinite(base)) return;
    const cpu = cpuUs(state, n) - cpuUs('off', n);
    const extra = [
      Number.isFinite(cpu) ? `+${cpu.toFixed(0)} µs backend CPU/insert` : '',
      `${(100 * notifyShare(state, n)).toFixed(0)}% of commits NOTIFY`,
    ].filter(Boolean);
    rows.push({
      scenario: 'write-cost',
      case: `single-row inserts, ${n} writer${n === 1 ? '' : 's'}${label}`,
      figure: `capture on ${si(value)} inserts/s (${extra.join(', ')})`,
      value,
      baseline: `capture off ${si(base)}/s`,
      baselineValue: base,
      ratio: value / base,
      ratioText: `${(value / base).toFixed(2)}×`,
      target: target ? `≥ ${target}× capture off` : '—',
      status: target ? status(value / base >= target) : 'info',
    });
  };
  ratioRow(4, 'on', ' (no reader asleep: no NOTIFY)', 0.7);
  ratioRow(4, 'asleep', ', a reader asleep (every commit NOTIFYs)');
  ratioRow(4, 'hub', ', a hub reading them (same machine)');
  for (const n of w.writers) {
    ratioRow(n, 'on', ' (no reader asleep)');
    ratioRow(n, 'asleep', ', a reader asleep');
  }
  rows.push({
    scenario: 'write-cost',
    case: `one ${w.statementRows.toLocaleString('en')}-row INSERT … SELECT`,
    figure: `capture on ${ms(on)} ms`,
    value: on,
    baseline: `capture off ${ms(off)} ms`,
    baselineValue: off,
    ratio: off / on,
    ratioText: `${(off / on).toFixed(2)}× speed`,
    target: '≥ 0.35× speed',
    status: status(off / on >= 0.35),
  });
}

async function electionNight() {
  const en = sizes.electionNight;
  if (!en) return;
  const spots: Spot[] = [];
  for (let e = 1; e <= en.elections; e++) for (let k = 1; k <= en.committeesPer; k++) spots.push({ election: e, committee: committeeId(e, k, SEED.committeesPer) });
  const build = (perCommittee: number): Dashboard[] => {
    const list: Dashboard[] = [];
    for (const { committee } of spots) for (let d = 0; d < perCommittee; d++) list.push({ committees: [committee], group: `c${committee}` });
    for (let e = 1; e <= en.elections; e++) for (let d = 0; d < en.electionDashboards; d++) list.push({ elections: [e], group: `e${e}` });
    return list;
  };
  // Spread writes over committees in a shuffled but fixed order.
  for (let i = spots.length - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1);
    [spots[i], spots[j]] = [spots[j] as Spot, spots[i] as Spot];
  }
  const asked = build(en.committeeDashboards).length;
  log(`election night: ${asked.toLocaleString('en')} dashboards, ${en.rate} writes/s for ${en.seconds} s`);
  let capped = '';
  let n = asked;
  const result = await withServer('hub', async (server) => {
    let perCommittee = en.committeeDashboards;
    while (perCommittee > 0 && build(perCommittee).length > capacityOf(server)) perCommittee--;
    if (perCommittee < en.committeeDashboards) {
      capped = capNote(server);
      fdCapped = true;
      log(`  ${asked.toLocaleString('en')} do not fit: ${perCommittee} dashboards per committee instead of ${en.committeeDashboards} (${capped})`);
    }
    const dashboards = build(perCommittee);
    n = dashboards.length;
    const connect = await connectAll(server.target, n, dashboards, 20, 64);
    const { droppedAtOpen } = await settle(connect);
    log(`  connected ${connect.opened} in ${connect.seconds.toFixed(1)} s${droppedAtOpen > 0 ? `, ${droppedAtOpen} dropped at open (left out)` : ''}`);
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
    const live = await statsAll({ latencies: false, groups: true });
    let expected = 0;
    for (const [g, st] of Object.entries(live.groups)) expected += expectedOf(g) * st.conns;
    await waitDelivered(expected, 10_000);
    const s = await statsAll({ latencies: true, groups: true });
    let lost = 0;
    let short = 0;
    for (const [g, st] of Object.entries(s.groups)) {
      const want = expectedOf(g);
      lost += want * st.conns - st.total;
      if (st.min < want) short += 1;
    }
    return { dashboards: n, perCommittee, connect, droppedAtOpen, sent, expected, delivered: s.events, lost, groupsShort: short, closed: s.closed, closeCodes: s.closeCodes, latency: summarize(s.latencies) };
  });
  raw['election-night'] = { ...result, ...(capped ? { capped } : {}) };
  log(`  ${pct(result.latency)}; ${si(result.delivered)} of ${si(result.expected)} delivered, ${result.closed} closed`);
  const ratio = result.delivered / Math.max(1, result.expected);
  rows.push({
    scenario: 'election-night',
    case: `${n.toLocaleString('en')} dashboards, ${en.rate} writes/s, ${en.seconds / 60} min${capped ? ` — asked ${asked.toLocaleString('en')}, ${capped}` : ''}`,
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
  log(`mode ${mode}; database ${ADMIN_URL.replace(/\/\/[^@/]*@/, '//')}; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if ((os.loadavg()[0] ?? 0) > 1) log(`  note: other processes are busy on this ${os.cpus().length}-core machine; expect noisier figures`);
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
  // Write cost last: its hundreds of thousands of rows would otherwise sit in every later scenario's tables.
  if (wanted('latency') || wanted('peers')) await run('latency', () => latency(wanted('peers')));
  if (wanted('fan-out') || wanted('peers')) await run('fan-out', () => fanout(wanted('peers'), wanted('fan-out')));
  if (wanted('memory') || wanted('connection-rate')) await run('memory', () => memory(wanted('connection-rate')));
  if (wanted('election-night') && sizes.electionNight) await run('election-night', electionNight);
  if (wanted('write-cost')) await run('write-cost', writeCost);

  const seconds = Math.round((wallNow() - T0) / 100) / 10;
  const machine = {
    loadAverageAtStart: LOAD_AT_START,
    loadAverageAtEnd: os.loadavg(),
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? '?',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: pgVersion,
  };
  const table = renderTable(rows);
  console.log(`\nelection-hub benchmarks — mode ${mode}, ${new Date().toISOString()}`);
  console.log(`machine: ${machine.cpus} × ${machine.cpu}, ${machine.memoryGiB} GiB, ${machine.kernel}, Node ${machine.node}, ${machine.postgres}`);
  console.log(`load average (1 min) at start ${LOAD_AT_START[0]?.toFixed(2)}, at end ${os.loadavg()[0]?.toFixed(2)}\n`);
  console.log(table);
  const misses = rows.filter((r) => r.status === 'MISS').length;
  console.log(`\n${rows.filter((r) => r.status === 'PASS').length} PASS, ${misses} MISS, ${rows.filter((r) => r.status === 'info').length} info; ` +
    `scenario times: ${Object.entries(timings).map(([k, v]) => `${k} ${v} s`).join(', ')}; total ${seconds} s`);
  if (fdCapped) console.log('note: some sizes were capped by the open-file limit (see the rows marked "capped"); the figures are for the sizes shown');
  const out = flags.out ?? join(RESULTS, 'latest.json');
  const json = JSON.stringify({ mode, fdCapped, startedAt: new Date(Date.now() - seconds * 1000).toISOString(), seconds, timings, machine, sizes, rows, raw }, null, 2);
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
