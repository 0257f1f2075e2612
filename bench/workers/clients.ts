/*
 * Client worker: holds a share of the benchmark's WebSocket connections (raw, counting
 * frames; see lib/rawws.ts) and, for the NOTIFY baseline, one LISTENing pg client.
 * Started several times by bench/run.ts so that the load generator is not one event loop.
 */
import pg from 'pg';
import { signToken } from '../../src/auth/jwt.ts';
import { wallNow } from '../lib/clock.ts';
import { RawConn, Sink } from '../lib/rawws.ts';
import { notify, serve } from '../lib/rpc.ts';

export type TargetKind = 'hub' | 'bare' | 'ws' | 'sio';
export type Target = { kind: TargetKind; host: string; port: number };
/** What one connection's token grants; `group` keys the per-group delivery counts. */
export type Dashboard = { elections?: number[]; committees?: number[]; group: string };

export type ConnectArgs = {
  target: Target;
  /** Connections this worker opens; the j-th has global index worker + j * workers. */
  count: number;
  worker: number;
  workers: number;
  dashboards: Dashboard[];
  secret: string;
  runId: string;
  concurrency: number;
  localAddresses?: string[];
  sampleEvery: number;
};

export type ConnectResult = {
  opened: number;
  failed: number;
  failures: Record<string, number>;
  t0: number;
  t1: number;
  signMs: number;
};

export type GroupStats = { conns: number; open: number; total: number; min: number; max: number };

export type Stats = {
  events: number;
  other: number;
  bytes: number;
  first: number;
  last: number;
  open: number;
  closed: number;
  closeCodes: Record<string, number>;
  groups: Record<string, GroupStats>;
  latencies: number[];
  notifyLatencies: number[];
};

const sink = new Sink(0);
let conns: Array<{ c: RawConn; group: string }> = [];
let listener: pg.Client | undefined;
let notifications = 0;
let notifyLatencies: number[] = [];

const pathOf = (kind: TargetKind, token: string) => {
  switch (kind) {
    case 'hub':
    case 'ws':
      return `/ws?token=${encodeURIComponent(token)}`;
    case 'bare':
      return '/ws';
    case 'sio':
      return '/socket.io/?EIO=4&transport=websocket';
  }
};

const api = {
  async connect(a: ConnectArgs): Promise<ConnectResult> {
    // Tokens are signed before the clock starts: the rate measured is the server's.
    const s0 = wallNow();
    const jobs: Array<{ token: string; group: string }> = [];
    for (let j = 0; j < a.count; j++) {
      const g = a.worker + j * a.workers;
      const d = a.dashboards[g % a.dashboards.length] ?? { group: 'none' };
      const token =
        a.target.kind === 'bare'
          ? ''
          : await signToken(a.secret, {
              sub: `${a.runId}-${g}`,
              ...(d.elections ? { elections: d.elections } : {}),
              ...(d.committees ? { committees: d.committees } : {}),
              ttl: '2h',
            });
      jobs.push({ token, group: d.group });
    }
    const signMs = wallNow() - s0;
    sink.sampleEvery = a.sampleEvery;
    const failures: Record<string, number> = {};
    let opened = 0;
    let next = 0;
    const t0 = wallNow();
    const lane = async () => {
      for (;;) {
        const j = next++;
        const job = jobs[j];
        if (!job) return;
        const local = a.localAddresses?.length ? a.localAddresses[j % a.localAddresses.length] : undefined;
        const c = new RawConn({
          host: a.target.host,
          port: a.target.port,
          path: pathOf(a.target.kind, job.token),
          protocol: a.target.kind === 'sio' ? 'socketio' : 'plain',
          ...(a.target.kind === 'sio' ? { sioAuth: JSON.stringify({ token: job.token }) } : {}),
          ...(local ? { localAddress: local } : {}),
          group: job.group,
          sink,
        });
        try {
          await c.ready;
          conns.push({ c, group: job.group });
          opened++;
        } catch (err) {
          const e = err as Error & { code?: string; status?: string };
          const key = e.status ? `HTTP ${e.status}` : (e.code ?? e.message);
          failures[key] = (failures[key] ?? 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, a.concurrency) }, lane));
    return { opened, failed: a.count - opened, failures, t0, t1: wallNow(), signMs };
  },

  /** Zeroes the counters; connections already closed are forgotten (loss counts from here). */
  reset(a: { sampleEvery: number }) {
    sink.reset(a.sampleEvery);
    sink.closed = 0;
    sink.closeCodes = {};
    conns = conns.filter(({ c }) => !c.closed);
    for (const { c } of conns) c.events = 0;
    notifyLatencies = [];
  },

  stats(a: { latencies: boolean; groups: boolean }): Stats {
    const groups: Record<string, GroupStats> = {};
    if (a.groups) {
      for (const { c, group } of conns) {
        const g = (groups[group] ??= { conns: 0, open: 0, total: 0, min: Number.POSITIVE_INFINITY, max: 0 });
        g.conns++;
        if (!c.closed) g.open++;
        g.total += c.events;
        if (c.events < g.min) g.min = c.events;
        if (c.events > g.max) g.max = c.events;
      }
    }
    const out: Stats = {
      events: sink.events,
      other: sink.other,
      bytes: sink.bytes,
      first: sink.first,
      last: sink.last,
      open: conns.reduce((n, { c }) => n + (c.closed ? 0 : 1), 0),
      closed: sink.closed,
      closeCodes: { ...sink.closeCodes },
      groups,
      latencies: a.latencies ? sink.latencies : [],
      notifyLatencies: a.latencies ? notifyLatencies : [],
    };
    if (a.latencies) {
      sink.latencies = [];
      notifyLatencies = [];
    }
    return out;
  },

  /** Resets every connection (no TIME_WAIT on the client side). */
  closeAll() {
    const n = conns.length;
    for (const { c } of conns) c.destroy();
    conns = [];
    sink.closed = 0;
    sink.closeCodes = {};
    return { closed: n };
  },

  /** The bare LISTEN/NOTIFY baseline: payloads are `T<wall ms>` from the writer. */
  async listen(a: { url: string; channel: string }) {
    listener = new pg.Client({ connectionString: a.url, application_name: 'bench-listener' });
    listener.on('error', () => undefined);
    await listener.connect();
    listener.on('notification', (n) => {
      notifications++;
      if (n.payload?.startsWith('T')) notifyLatencies.push(wallNow() - Number.parseFloat(n.payload.slice(1)));
    });
    await listener.query(`LISTEN ${pg.escapeIdentifier(a.channel)}`);
  },

  /** Notifications received on the listened channel since the last call (one per notifying commit). */
  async notifications() {
    const n = notifications;
    notifications = 0;
    return { n };
  },

  async unlisten() {
    const l = listener;
    listener = undefined;
    await l?.end().catch(() => undefined);
  },
};

export type ClientApi = typeof api;

serve(api, () => {
  for (const { c } of conns) c.destroy();
  process.exit(0);
});
notify('ready', { pid: process.pid });
