/*
 * Writer worker: generates the database side of every scenario — bulk statements for
 * fan-out bursts, paced single-row writes (or bare NOTIFYs) carrying a send timestamp for
 * latency, and flat-out single-row inserts for the write-cost comparison.
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { sleep, wallNow } from '../lib/clock.ts';
import { notify, serve } from '../lib/rpc.ts';

const connect = async (url: string, n: number): Promise<pg.Client[]> => {
  const clients = Array.from(
    { length: n },
    () => new pg.Client({ connectionString: url, application_name: 'bench-writer' }),
  );
  for (const c of clients) c.on('error', () => undefined);
  await Promise.all(clients.map((c) => c.connect()));
  return clients;
};
const endAll = (clients: pg.Client[]) => Promise.all(clients.map((c) => c.end().catch(() => undefined)));

export type Spot = { election: number; committee: number };

/** utime + stime of these backends in ms (Linux, PostgreSQL on this machine), or undefined. */
function backendCpuMs(pids: number[]): number | undefined {
  try {
    let ticks = 0;
    for (const pid of pids) {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      ticks += Number(f[11]) + Number(f[12]);
    }
    return Number.isFinite(ticks) ? ticks * 10 : undefined; // USER_HZ 100
  } catch {
    return undefined;
  }
}

export type PacedArgs = {
  url: string;
  /** Writes per second over all connections. */
  rate: number;
  seconds: number;
  connections: number;
  /**
   * `insert`: a guarantees row whose voter_name is `T<send time>` (captured by the hub's triggers);
   * `notify`: a row in an uncaptured table and pg_notify(channel, 'T<send time>') in the same
   * transaction (the same commit, WAL flush included, as `insert`); `notify-only`: a read-only
   * `SELECT pg_notify(…)` (no WAL flush at commit).
   */
  kind: 'insert' | 'notify' | 'notify-only';
  channel?: string;
  spots: Spot[];
};

export type PacedResult = {
  sent: number;
  errors: number;
  seconds: number;
  perElection: Record<string, number>;
  perCommittee: Record<string, number>;
  maxBehindMs: number;
};

const api = {
  /** `total` rows in statements of `batch`, one after another, spread over the election's committees. */
  async bulk(a: {
    url: string;
    total: number;
    batch: number;
    election: number;
    firstCommittee: number;
    committees: number;
  }) {
    const [c] = await connect(a.url, 1);
    if (!c) throw new Error('no client');
    const t0 = wallNow();
    try {
      for (let done = 0; done < a.total; done += a.batch) {
        const n = Math.min(a.batch, a.total - done);
        await c.query(
          `INSERT INTO guarantees (election_id, committee_id) SELECT $1::bigint, $2::bigint + (g % $3::int) FROM generate_series(1, $4::int) g`,
          [a.election, a.firstCommittee, a.committees, n],
        );
      }
    } finally {
      await endAll([c]);
    }
    return { ms: wallNow() - t0 };
  },

  /** Writes at a steady rate, each stamped with the time it was sent. */
  async paced(a: PacedArgs): Promise<PacedResult> {
    const clients = await connect(a.url, a.connections);
    const perElection: Record<string, number> = {};
    const perCommittee: Record<string, number> = {};
    let sent = 0;
    let errors = 0;
    let maxBehind = 0;
    const interval = 1000 / a.rate;
    const total = Math.round(a.rate * a.seconds);
    const start = wallNow() + 20;
    try {
      await Promise.all(
        clients.map(async (c, ci) => {
          for (let k = ci; k < total; k += clients.length) {
            const due = start + k * interval;
            const wait = due - wallNow();
            if (wait > 1) await sleep(wait);
            else maxBehind = Math.max(maxBehind, -wait);
            const spot = a.spots[k % a.spots.length] ?? { election: 1, committee: 1 };
            const stamp = `T${wallNow().toFixed(3)}`;
            try {
              if (a.kind === 'insert') {
                await c.query({
                  name: 'bench_probe_insert',
                  text: 'INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)',
                  values: [spot.election, spot.committee, stamp],
                });
                perElection[spot.election] = (perElection[spot.election] ?? 0) + 1;
                perCommittee[spot.committee] = (perCommittee[spot.committee] ?? 0) + 1;
              } else if (a.kind === 'notify') {
                await c.query({
                  name: 'bench_probe_notify',
                  text: 'WITH w AS (INSERT INTO bench_notify_probe (stamp) VALUES ($2) RETURNING stamp) SELECT pg_notify($1, stamp) FROM w',
                  values: [a.channel ?? 'bench_probe', stamp],
                });
              } else {
                await c.query({
                  name: 'bench_probe_notify_only',
                  text: 'SELECT pg_notify($1, $2)',
                  values: [a.channel ?? 'bench_probe', stamp],
                });
              }
              sent++;
            } catch {
              errors++;
            }
          }
        }),
      );
    } finally {
      await endAll(clients);
    }
    return { sent, errors, seconds: (wallNow() - start) / 1000, perElection, perCommittee, maxBehindMs: maxBehind };
  },

  /**
   * Single-row inserts as fast as `writers` connections go, for `seconds`; with the CPU time
   * their backends used (from /proc, when PostgreSQL runs on this machine; else undefined).
   * `commitDelayUs`: each writer session waits that long before its commit's WAL flush
   * (`commit_delay`, `commit_siblings` 0; superuser only), as on a disk with slower flushes.
   */
  async flatOut(a: {
    url: string;
    writers: number;
    seconds: number;
    election: number;
    firstCommittee: number;
    committees: number;
    commitDelayUs?: number;
  }) {
    const clients = await connect(a.url, a.writers);
    if (a.commitDelayUs)
      await Promise.all(
        clients.map((c) => c.query(`SET commit_delay = ${Math.round(a.commitDelayUs ?? 0)}; SET commit_siblings = 0`)),
      );
    const pids = await Promise.all(
      clients.map(async (c) => Number((await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p)),
    );
    const cpu = backendCpuMs(pids);
    let inserts = 0;
    const t0 = wallNow();
    const end = t0 + a.seconds * 1000;
    try {
      await Promise.all(
        clients.map(async (c, ci) => {
          for (let k = ci; wallNow() < end; k++) {
            await c.query({
              name: 'bench_flat_insert',
              text: 'INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)',
              values: [a.election, a.firstCommittee + (k % a.committees)],
            });
            inserts++;
          }
        }),
      );
      const seconds = (wallNow() - t0) / 1000;
      const after = backendCpuMs(pids); // before the backends exit
      return { inserts, seconds, backendCpuMs: cpu === undefined || after === undefined ? undefined : after - cpu };
    } finally {
      await endAll(clients);
    }
  },

  /** One INSERT … SELECT of `rows` rows; its duration in ms. */
  async statement(a: { url: string; rows: number; election: number; firstCommittee: number; committees: number }) {
    const [c] = await connect(a.url, 1);
    if (!c) throw new Error('no client');
    try {
      const t0 = wallNow();
      await c.query(
        `INSERT INTO guarantees (election_id, committee_id) SELECT $2::bigint, $3::bigint + (g % $4::int) FROM generate_series(1, $1::int) g`,
        [a.rows, a.election, a.firstCommittee, a.committees],
      );
      return { ms: wallNow() - t0 };
    } finally {
      await endAll([c]);
    }
  },

  async sql(a: { url: string; text: string }) {
    const [c] = await connect(a.url, 1);
    if (!c) throw new Error('no client');
    try {
      const r = await c.query(a.text);
      return { rows: r.rows as unknown[] };
    } finally {
      await endAll([c]);
    }
  },
};

export type WriterApi = typeof api;

serve(api);
notify('ready', { pid: process.pid });
