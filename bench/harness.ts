/*
 * What every benchmark scenario shares: the run's mode, its database, the writer and the
 * client workers, servers started in child processes, and the results being gathered.
 *
 * A scenario (bench/scenarios/*.ts, listed in bench/scenarios/index.ts) is an object with a
 * name, its sizes per mode and a `run(bench, sizes)`; it reaches everything else through the
 * `Bench` it is given, one per run, so nothing is carried from one scenario to the next except
 * what the database and the workers hold (each server is stopped and every client closed when
 * `withServer` returns).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type BenchDatabase, committeeId, createBenchDatabase } from './lib/db.ts';
import { sleep } from './lib/clock.ts';
import { RESULTS, fdLimitOf, spawnTs, waitReady } from './lib/procs.ts';
import type { Child } from './lib/rpc.ts';
import type { Row } from './lib/report.ts';
import { type Summary, ms, si } from './lib/stats.ts';
import type { ClientApi, ConnectResult, Dashboard, Stats, Target, TargetKind } from './workers/clients.ts';
import type { Spot, WriterApi } from './workers/writer.ts';
import type { HubProcessApi } from './hub-process.ts';
import type { BareApi } from './servers/uws-bare.ts';

// ---- scenarios -----------------------------------------------------------------------------

export type Mode = 'smoke' | 'quick' | 'full';

/** Command-line values: the runner's own and those the scenarios declared in `flags`. */
export type Flags = Readonly<Record<string, unknown>>;

export type Scenario<S extends object = object> = {
  /** Its name in `--only` and in the printed scenario times; usually also its rows' `scenario`. */
  name: string;
  /**
   * Every `scenario` its rows may carry (default: just `name`). `--only` any of them runs it;
   * `bench.wants(x)` tells which were asked (e.g. `peers`: the latency and fan-out scenarios
   * then also measure the peer servers).
   */
  reports?: readonly string[];
  /** Command-line options of its own, e.g. `--memory 10000,50000` (parsed strictly with the runner's). */
  flags?: Readonly<Record<string, { type: 'string' | 'boolean' }>>;
  /**
   * Its sizes in `mode`, or undefined when it does not run in that mode. Their keys go into the
   * JSON's `sizes` beside the other scenarios' (so pick keys no other scenario uses).
   */
  sizes(mode: Mode, flags: Flags): S | undefined;
  /** Measures, then adds its table rows (`bench.row`) and raw measurements (`bench.raw`). */
  run(bench: Bench, sizes: S): Promise<void>;
};

/** Sizes of the harness itself (not a scenario's). */
export type HarnessSizes = {
  /** Client worker processes the connections are spread over. */
  workers: number;
  /** How long a delivery count may stand still before the rest is counted as lost. */
  stallMs: number;
};

export const HARNESS_SIZES: Record<Mode, HarnessSizes> = {
  smoke: { workers: 2, stallMs: 1000 },
  quick: { workers: 4, stallMs: 2000 },
  full: { workers: 4, stallMs: 5000 },
};

// ---- the seeded data -----------------------------------------------------------------------

/** Elections 1..20 with 50 committees each (ids from `committeeId`), seeded before any scenario. */
export const SEED = { elections: 20, committeesPer: 50 } as const;
export const E1_COMMITTEES = Array.from({ length: SEED.committeesPer }, (_, k) =>
  committeeId(1, k + 1, SEED.committeesPer),
);
/** Where the latency probes are written: election 1's committees. */
export const e1Spots: readonly Spot[] = E1_COMMITTEES.map((c) => ({ election: 1, committee: c }));

/** One dashboard per connection: a token for one election, counted as group `e<election>`. */
export const dashboardsOf = (election: number): Dashboard[] => [{ elections: [election], group: `e${election}` }];

// ---- formatting ----------------------------------------------------------------------------

export const LABEL: Record<TargetKind, string> = { hub: 'hub', bare: 'bare uWS', ws: 'ws hub', sio: 'socket.io hub' };
export const pct = (s: Summary) => `p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms`;
export const status = (ok: boolean): Row['status'] => (ok ? 'PASS' : 'MISS');

// ---- servers -------------------------------------------------------------------------------

export type Server = {
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

/** Sockets a server can hold under its open-file limit (a margin for its database, log and listen fds). */
export const capacityOf = (server: Server) =>
  Number.isFinite(server.fdLimit) ? server.fdLimit - 500 : Number.POSITIVE_INFINITY;
export const capNote = (server: Server) =>
  `capped by the ${server.fdLimit.toLocaleString('en')} open-file limit: raise it with prlimit --nofile or LimitNOFILE (needs CAP_SYS_RESOURCE)`;

export async function metricValue(port: number, name: string): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/** CPU seconds (user + system) the process has used, from /proc. */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** An orderly stop (so --cpu-prof writes its profile), then the process is gone in any case. */
async function stopChild<A extends { stop(): unknown }>(child: Child<A>): Promise<void> {
  await child.call('stop', undefined, 15_000).catch(() => undefined);
  await child.kill(5000);
}

// ---- clients -------------------------------------------------------------------------------

export type Connected = ConnectResult & { seconds: number; rate: number };

export type Merged = Omit<Stats, 'groups'> & {
  groups: Record<string, { conns: number; open: number; total: number; min: number; max: number }>;
};

// ---- the run -------------------------------------------------------------------------------

export const LOG_DIR = join(RESULTS, 'logs');
export const PROFILE_DIR = join(RESULTS, 'profiles');

export type BenchOptions = {
  mode: Mode;
  sizes: HarnessSizes;
  /** The `--only` names (empty: everything). */
  only: ReadonlySet<string>;
  /** Run the hub with --cpu-prof (profiles in bench/results/profiles/). */
  profile: boolean;
  db: BenchDatabase;
  /** The cluster's admin URL (the bench database was created through it). */
  adminUrl: string;
  writer: Child<WriterApi>;
  clients: ReadonlyArray<Child<ClientApi>>;
  /** Secret the hub and the peers verify and the client workers sign with. */
  secret: string;
  runId: string;
  redisUrl: string;
  log(msg: string): void;
};

/** One run: handed to each scenario in turn. */
export class Bench {
  readonly mode: Mode;
  readonly sizes: HarnessSizes;
  readonly db: BenchDatabase;
  readonly writer: Child<WriterApi>;
  readonly clients: ReadonlyArray<Child<ClientApi>>;
  readonly secret: string;
  readonly log: (msg: string) => void;
  readonly #opts: BenchOptions;
  readonly #rows: Row[] = [];
  readonly #raw: Record<string, unknown> = {};
  #fdCapped = false;

  constructor(opts: BenchOptions) {
    this.#opts = opts;
    this.mode = opts.mode;
    this.sizes = opts.sizes;
    this.db = opts.db;
    this.writer = opts.writer;
    this.clients = opts.clients;
    this.secret = opts.secret;
    this.log = opts.log;
  }

  /** The bench database's URL (hub schema, reference schema and the seed applied). */
  get url(): string {
    return this.db.url;
  }

  /**
   * Another fresh database in the same cluster (sql/ applied, nothing seeded). The caller drops
   * it; the runner drops it too if the run ends first.
   */
  otherDatabase(): Promise<BenchDatabase> {
    return createBenchDatabase(this.#opts.adminUrl);
  }

  /** Whether `--only` asked for rows of this scenario name (true without `--only`). */
  wants(name: string): boolean {
    return this.#opts.only.size === 0 || this.#opts.only.has(name);
  }

  // ---- results -----------------------------------------------------------------------------

  row(r: Row): void {
    this.#rows.push(r);
  }

  raw(key: string, value: unknown): void {
    this.#raw[key] = value;
  }

  /** Some size was capped by the open-file limit (the summary says so). */
  noteFdCapped(): void {
    this.#fdCapped = true;
  }

  results(): { rows: readonly Row[]; raw: Readonly<Record<string, unknown>>; fdCapped: boolean } {
    return { rows: this.#rows, raw: this.#raw, fdCapped: this.#fdCapped };
  }

  // ---- servers -----------------------------------------------------------------------------

  /**
   * A hub process. Alone (`node` undefined) it runs as deployed on one machine: default limits,
   * info logging (to a file), no Redis. With `node` it is that node of a cluster sharing this
   * run's Redis (its own NODE_ID, the run's REDIS_PREFIX), as deployed on several machines.
   */
  async #startHub(node?: number): Promise<Server> {
    const runId = this.#opts.runId;
    const { child, ready } = await spawnTs<HubProcessApi>(
      node === undefined ? 'hub' : `hub-${node}`,
      'bench/hub-process.ts',
      {
        logDir: LOG_DIR,
        fdLimit: 200_000,
        env: {
          DATABASE_URL: this.url,
          JWT_SECRET: this.secret,
          PORT: '0',
          HOST: '127.0.0.1',
          METRICS_PORT: '0',
          LOG_LEVEL: process.env.BENCH_HUB_LOG ?? 'info',
          ...(node === undefined
            ? { REDIS_URL: '' }
            : { REDIS_URL: this.#opts.redisUrl, NODE_ID: `bench-${runId}-${node}`, REDIS_PREFIX: `bench-${runId}:` }),
        },
        nodeArgs: ['--expose-gc', ...(this.#opts.profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : [])],
      },
    );
    const stop = () => stopChild(child);
    const { port, metricsPort, pid } = ready as { port: number; metricsPort: number; pid: number };
    // Upgrades need the listener connected and the reader started: wait for /ready.
    if (!(await waitReady(port, 15_000))) {
      await stop();
      throw new Error(`hub${node === undefined ? '' : ` node ${node}`} never became ready`);
    }
    return {
      kind: 'hub',
      port,
      metricsPort,
      pid,
      target: { kind: 'hub', host: '127.0.0.1', port },
      stop,
      gc: async () => void (await child.call('gc', undefined)),
      memory: () => child.call('memory', undefined),
      fdLimit: fdLimitOf(pid),
      publish: () => Promise.reject(new Error('the hub publishes what the database says')),
    };
  }

  async startServer(kind: TargetKind): Promise<Server> {
    if (kind === 'hub') return this.#startHub();
    const file = { bare: 'bench/servers/uws-bare.ts', ws: 'bench/peers/ws-hub.ts', sio: 'bench/peers/socketio-hub.ts' }[
      kind
    ];
    const name = { bare: 'bare-uws', ws: 'ws-hub', sio: 'socketio-hub' }[kind];
    const { child, ready } = await spawnTs<BareApi>(name, file, {
      logDir: LOG_DIR,
      fdLimit: 200_000,
      env: { DATABASE_URL: this.url, JWT_SECRET: this.secret, REDIS_URL: this.#opts.redisUrl },
      nodeArgs: kind === 'bare' ? ['--expose-gc'] : [],
    });
    const { port, pid } = ready as { port: number; pid: number };
    return {
      kind,
      port,
      metricsPort: port,
      pid,
      target: { kind, host: '127.0.0.1', port },
      stop: () => stopChild(child),
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
  async withServer<T>(kind: TargetKind, fn: (s: Server) => Promise<T>): Promise<T> {
    return this.#withServers(
      kind === 'ws' || kind === 'sio',
      async () => [await this.startServer(kind)],
      ([s]) => fn(s as Server),
    );
  }

  /**
   * `withServer('hub', …)` with `nodes` hub processes against the bench database, started
   * together: the nodes of one cluster (each reads the whole outbox itself; they share Redis).
   * If one fails to start, the others are stopped.
   */
  async withHubs<T>(nodes: number, fn: (hubs: Server[]) => Promise<T>): Promise<T> {
    return this.#withServers(
      false,
      async () => {
        const started = await Promise.allSettled(Array.from({ length: nodes }, (_, k) => this.#startHub(k + 1)));
        const up = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
        const failed = started.find((r) => r.status === 'rejected');
        if (failed) {
          await Promise.all(up.map((s) => s.stop()));
          throw failed.reason;
        }
        return up;
      },
      fn,
    );
  }

  async #withServers<T>(peer: boolean, start: () => Promise<Server[]>, fn: (s: Server[]) => Promise<T>): Promise<T> {
    const url = this.url;
    await this.writer.call('sql', {
      url,
      text: `ANALYZE${peer ? '; CREATE INDEX IF NOT EXISTS bench_outbox_id ON hub.outbox (id)' : ''}`,
    });
    const servers = await start();
    try {
      return await fn(servers);
    } finally {
      await this.closeAll();
      await Promise.all(servers.map((s) => s.stop()));
      if (peer) await this.writer.call('sql', { url, text: 'DROP INDEX IF EXISTS hub.bench_outbox_id' });
    }
  }

  // ---- clients -----------------------------------------------------------------------------

  /** The first client worker (it also LISTENs for the NOTIFY baselines). */
  get firstClient(): Child<ClientApi> {
    const first = this.clients[0];
    if (!first) throw new Error('no client worker');
    return first;
  }

  async connectAll(
    target: Target,
    total: number,
    dashboards: Dashboard[],
    sampleEvery: number,
    concurrency = 32,
  ): Promise<Connected> {
    const K = this.clients.length;
    // Beyond ~28 000 connections per source address the ephemeral ports run out: spread them.
    const localAddresses = total > 20_000 ? ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'] : undefined;
    const results = await Promise.all(
      this.clients.map((c, k) =>
        c.call('connect', {
          target,
          count: Math.floor(total / K) + (k < total % K ? 1 : 0),
          worker: k,
          workers: K,
          dashboards,
          secret: this.secret,
          runId: `${this.#opts.runId}-${target.kind}-${Date.now().toString(36)}`,
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
    if (opened < total)
      this.log(
        `  ${LABEL[target.kind]}: ${total - opened} of ${total} connections failed: ${JSON.stringify(failures)}`,
      );
    return {
      opened,
      failed: total - opened,
      failures,
      t0,
      t1,
      signMs: Math.max(...results.map((r) => r.signMs)),
      seconds,
      rate: opened / seconds,
    };
  }

  /**
   * Connections still open a moment after connecting. uWS (this fork) occasionally drops a
   * freshly upgraded socket with 1006 when the upgrade completed asynchronously on a cold
   * process; such a socket is left out of the expected deliveries and counted apart.
   */
  async settle(connect: Connected, openBefore = 0): Promise<{ open: number; droppedAtOpen: number }> {
    await sleep(200);
    const s = await this.statsAll({ latencies: false, groups: false });
    const open = s.open - openBefore;
    return { open, droppedAtOpen: connect.opened - open };
  }

  async openNow(): Promise<number> {
    return (await this.statsAll({ latencies: false, groups: false })).open;
  }

  async resetAll(sampleEvery: number): Promise<void> {
    await Promise.all(this.clients.map((c) => c.call('reset', { sampleEvery })));
  }

  async closeAll(): Promise<void> {
    await Promise.all(this.clients.filter((c) => c.alive).map((c) => c.call('closeAll', undefined)));
  }

  async statsAll(opts: { latencies: boolean; groups: boolean }): Promise<Merged> {
    const all = await Promise.all(this.clients.map((c) => c.call('stats', opts)));
    const m: Merged = {
      events: 0,
      other: 0,
      bytes: 0,
      first: 0,
      last: 0,
      open: 0,
      closed: 0,
      closeCodes: {},
      groups: {},
      latencies: [],
      notifyLatencies: [],
    };
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
  async waitDelivered(
    expected: number,
    stallMs: number,
    progressEveryMs = 0,
  ): Promise<{ complete: boolean; events: number }> {
    let last = -1;
    let lastChange = Date.now();
    let lastProgress = Date.now();
    for (;;) {
      const s = await this.statsAll({ latencies: false, groups: false });
      if (s.events >= expected) return { complete: true, events: s.events };
      if (s.events !== last) {
        last = s.events;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > stallMs) return { complete: false, events: s.events };
      if (progressEveryMs > 0 && Date.now() - lastProgress > progressEveryMs) {
        lastProgress = Date.now();
        this.log(`  … ${si(s.events)} of ${si(expected)} deliveries`);
      }
      await sleep(100);
    }
  }
}
