/*
 * Client worker for the compression and real-size scenarios: holds a share of the
 * connections (bench/lib/deflate-ws.ts: offering permessage-deflate or not, counting bytes on
 * the wire) and, for connections that decode, reads every frame as the SDK would: row events
 * counted, dashboard updates applied by the contract's chain rule (base null: replace; base =
 * the cursor of the last applied update: overwrite the listed committees; else a broken chain),
 * and latency probes read from a probe committee's vote count.
 */
import { signToken } from '../../src/auth/jwt.ts';
import { wallNow } from '../lib/clock.ts';
import { DeflateConn } from '../lib/deflate-ws.ts';
import { notify, serve } from '../lib/rpc.ts';

export type Group = {
  name: string;
  /** Path and query of the upgrade (e.g. `/ws?token={token}&subscribe=none`); `{token}` is replaced by `auth`'s token. */
  path: string;
  /** Each connection gets a token of its own (sub `<sub>-<group>-<n>`: the hub limits sockets per sub). */
  auth?: { secret: string; sub: string; elections: number[] };
  offer: boolean;
  /** Frames sent once the upgrade succeeded (e.g. a subscribe). */
  send?: string[];
  /** Inflate and read every frame (otherwise only bytes and messages are counted). */
  decode: boolean;
  /** Committee whose vote count carries the probe sequence number (decoding connections only). */
  probeCommittee?: number;
};

type ConnState = {
  conn: DeflateConn;
  group: string;
  rows: number;
  rowBytes: number;
  updates: number;
  updateBytes: number;
  fulls: number;
  otherBytes: number;
  chain: string | null | undefined;
  broken: number;
  totals?: { guarantees: number; attendance: number; votes: number };
  committees: Map<string, [number, number, number]>;
  probeMax: number;
  probes: Array<[number, number]>;
  sampled: boolean;
};

export type GroupStats = {
  conns: number;
  open: number;
  negotiated: number;
  wire: number;
  messages: number;
  payload: number;
  inflated: number;
  rows: number;
  rowBytes: number;
  updates: number;
  updateBytes: number;
  fulls: number;
  otherBytes: number;
  broken: number;
  minRows: number;
  maxRows: number;
  closeCodes: Record<string, number>;
};

let conns: ConnState[] = [];
let closeCodes: Record<string, Record<string, number>> = {};

const blank = (): GroupStats => ({
  conns: 0,
  open: 0,
  negotiated: 0,
  wire: 0,
  messages: 0,
  payload: 0,
  inflated: 0,
  rows: 0,
  rowBytes: 0,
  updates: 0,
  updateBytes: 0,
  fulls: 0,
  otherBytes: 0,
  broken: 0,
  minRows: Number.POSITIVE_INFINITY,
  maxRows: 0,
  closeCodes: {},
});

type Update = {
  type: string;
  cursor: string;
  base?: string | null;
  totals: { guarantees: number; attendance: number; votes: number };
  committees: Array<{ committee_id: number | string; guarantees: number; attendance: number; votes: number }>;
};

function onText(st: ConnState, probe: number | undefined, text: string) {
  // Row events start with {"type":"guarantee_update" / "attendance_update" / "voting_update".
  const c = text.charCodeAt(9);
  if (c === 103 || c === 97 || c === 118) {
    st.rows++;
    st.rowBytes += text.length;
    return;
  }
  if (!text.startsWith('{"type":"dashboard_update"')) {
    st.otherBytes += text.length;
    return;
  }
  st.updates++;
  st.updateBytes += text.length;
  const u = JSON.parse(text) as Update;
  const base = u.base === undefined ? null : u.base;
  if (base === null) {
    st.fulls++;
    st.committees.clear();
  } else if (base !== st.chain) {
    st.broken++;
  }
  for (const k of u.committees) st.committees.set(String(k.committee_id), [k.guarantees, k.attendance, k.votes]);
  st.totals = u.totals;
  st.chain = u.cursor;
  if (probe !== undefined && st.sampled) {
    const p = st.committees.get(String(probe));
    if (p && p[2] > st.probeMax) {
      st.probeMax = p[2];
      st.probes.push([p[2], wallNow()]);
    }
  }
}

const api = {
  /** Opens `count` connections of `group`, `concurrency` at a time; every `sampleEvery`-th records probes. */
  async connect(a: {
    host: string;
    port: number;
    group: Group;
    count: number;
    /** Index of this worker's first connection among the group's (for distinct subs). */
    first: number;
    concurrency: number;
    sampleEvery: number;
  }) {
    let next = 0;
    let failed = 0;
    const failures: Record<string, number> = {};
    // Tokens are signed before the clock starts.
    const paths: string[] = [];
    for (let j = 0; j < a.count; j++) {
      const auth = a.group.auth;
      const token = auth
        ? await signToken(auth.secret, {
            sub: `${auth.sub}-${a.group.name}-${a.first + j}`,
            elections: auth.elections,
            ttl: '2h',
          })
        : '';
      paths.push(a.group.path.replace('{token}', encodeURIComponent(token)));
    }
    const t0 = wallNow();
    const lane = async () => {
      for (;;) {
        const j = next++;
        if (j >= a.count) return;
        const st: ConnState = {
          conn: undefined as unknown as DeflateConn,
          group: a.group.name,
          rows: 0,
          rowBytes: 0,
          updates: 0,
          updateBytes: 0,
          fulls: 0,
          otherBytes: 0,
          chain: undefined,
          broken: 0,
          committees: new Map(),
          probeMax: 0,
          probes: [],
          sampled: a.sampleEvery > 0 && j % a.sampleEvery === 0,
        };
        const conn = new DeflateConn({
          host: a.host,
          port: a.port,
          path: paths[j] as string,
          offer: a.group.offer,
          decode: a.group.decode,
          onText: (text) => onText(st, a.group.probeCommittee, text),
          onClose: (code) => {
            const g = (closeCodes[st.group] ??= {});
            const k = String(code ?? 'no close frame');
            g[k] = (g[k] ?? 0) + 1;
          },
        });
        st.conn = conn;
        try {
          await conn.ready;
          // The hub answers frames in order after its connection_success: no need to wait for it.
          for (const f of a.group.send ?? []) conn.send(f);
          conns.push(st);
        } catch (err) {
          failed++;
          const e = err as Error & { status?: string; code?: string };
          const k = e.status ? `HTTP ${e.status}` : (e.code ?? e.message);
          failures[k] = (failures[k] ?? 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, a.concurrency) }, lane));
    return { opened: a.count - failed, failed, failures, seconds: (wallNow() - t0) / 1000 };
  },

  /** Zeroes the counters (the chain state stays: it is the connection's). */
  reset() {
    for (const st of conns) {
      const c = st.conn.counters;
      c.wire = c.messages = c.payload = c.inflated = c.compressed = 0;
      st.rows = st.rowBytes = st.updates = st.updateBytes = st.fulls = st.otherBytes = st.broken = 0;
      st.probes = [];
    }
    closeCodes = {};
  },

  stats(): Record<string, GroupStats> {
    const out: Record<string, GroupStats> = {};
    for (const st of conns) {
      const g = (out[st.group] ??= blank());
      const c = st.conn.counters;
      g.conns++;
      if (!st.conn.closed) g.open++;
      if (st.conn.ext.deflate) g.negotiated++;
      g.wire += c.wire;
      g.messages += c.messages;
      g.payload += c.payload;
      g.inflated += c.inflated;
      g.rows += st.rows;
      g.rowBytes += st.rowBytes;
      g.updates += st.updates;
      g.updateBytes += st.updateBytes;
      g.fulls += st.fulls;
      g.otherBytes += st.otherBytes;
      g.broken += st.broken;
      g.minRows = Math.min(g.minRows, st.rows);
      g.maxRows = Math.max(g.maxRows, st.rows);
    }
    for (const [k, codes] of Object.entries(closeCodes)) (out[k] ??= blank()).closeCodes = codes;
    return out;
  },

  /** Probe arrivals ([sequence, wall ms]) of the sampled connections. */
  probes(a: { group: string }): Array<Array<[number, number]>> {
    return conns.filter((st) => st.group === a.group && st.sampled && st.probes.length > 0).map((st) => st.probes);
  },

  /** Each decoding connection's dashboard as it applied it, for comparison with the database. */
  dashboards(a: { group: string; limit: number }) {
    return conns
      .filter((st) => st.group === a.group && st.totals)
      .slice(0, a.limit)
      .map((st) => ({ cursor: st.chain, totals: st.totals, committees: Object.fromEntries(st.committees) }));
  },

  closeAll() {
    for (const st of conns) st.conn.destroy();
    conns = [];
  },
};
export type DeflateClientsApi = typeof api;

serve(api);
notify('ready', { pid: process.pid });
