/*
 * Frames shaped exactly like the hub's, for benchmarks that publish without a database: row
 * events as src/db/outbox.ts builds them (the row's text as to_json writes it, sql/008: keys in
 * the reference schema's column order, no spaces) and dashboard updates as the contract
 * writes them (deltas listing the committees changed since `base`, or the full state).
 * Content varies like an election night's: names, statuses, timestamps, ids and cursors.
 */
import { CANDIDATES, FAMILY_NAMES, FIRST_NAMES } from '../../demo/simulator.ts';

const STATUS = ['pledged', 'confirmed', 'withdrawn'];

/** A deterministic generator (xorshift32), so every run and every mode publishes the same frames. */
export function rng(seed = 0x9e3779b9): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;

/** PostgreSQL's timestamptz text in a JSON value. */
const pgTime = (ms: number, micros: number) =>
  `${new Date(ms).toISOString().slice(0, 23)}${String(micros).padStart(3, '0')}+00:00`;

export type RowFrames = { next(nowMs: number): { frame: string; committee: number } };

/**
 * Row events for one election: `committees` committee ids from `firstCommittee`; the mix of an
 * election night (pledges, confirmations, check-ins, vote counts, a few deletes).
 */
export function rowFrames(opts: {
  election: number;
  firstCommittee: number;
  committees: number;
  firstId?: number;
  seed?: number;
}): RowFrames {
  const r = rng(opts.seed);
  let id = opts.firstId ?? 1_000_000;
  let txid = 7_340_000;
  let seq = 48_000_000;
  return {
    next(nowMs) {
      const committee = opts.firstCommittee + Math.floor(r() * opts.committees);
      const roll = r();
      const kind = roll < 0.5 ? 'guarantee' : roll < 0.8 ? 'attendance' : 'vote';
      const a = r();
      const action = a < 0.6 ? 'created' : a < 0.95 ? 'updated' : 'deleted';
      const rowId = action === 'created' ? ++id : id - Math.floor(r() * 5000);
      if (r() < 0.7) txid++;
      seq++;
      const who = `${pick(r, FIRST_NAMES)} ${pick(r, FAMILY_NAMES)}`;
      const at = pgTime(nowMs - 3, Math.floor(r() * 1000));
      let data: string;
      if (kind === 'guarantee') {
        const status = pick(r, STATUS);
        data = `{"id":${rowId},"election_id":${opts.election},"committee_id":${committee},"voter_name":"${who}","status":"${status}","updated_at":"${at}"}`;
      } else if (kind === 'attendance') {
        data = `{"id":${rowId},"election_id":${opts.election},"committee_id":${committee},"voter_name":"${who}","attended_at":"${at}"}`;
      } else {
        const count = Math.floor(r() * 900) + 1;
        data = `{"id":${rowId},"election_id":${opts.election},"committee_id":${committee},"candidate":"${pick(r, CANDIDATES)}","count":${count}}`;
      }
      const type = kind === 'vote' ? 'voting_update' : `${kind}_update`;
      const cursor = `${txid.toString(36)}.${seq.toString(36)}`;
      const frame =
        `{"type":"${type}","action":"${action}","election_id":${opts.election},"committee_id":${committee},` +
        `"id":${rowId},"data":${data},"cursor":"${cursor}","committed_at":"${new Date(nowMs).toISOString()}"}`;
      return { frame, committee };
    },
  };
}

export type Counts = { guarantees: number; attendance: number; votes: number };

/**
 * An election's dashboard as the hub keeps it: absolute numbers per committee (a real election's
 * size: five- and six-digit totals), and the frames: the full state (`base: null`) or a delta of
 * the committees touched since the previous update.
 */
export function dashboardFrames(opts: { election: number; firstCommittee: number; committees: number; seed?: number }) {
  const r = rng(opts.seed ?? 7);
  const per = new Map<number, Counts>();
  for (let k = 0; k < opts.committees; k++) {
    per.set(opts.firstCommittee + k, {
      guarantees: 2000 + Math.floor(r() * 3000),
      attendance: 1000 + Math.floor(r() * 1500),
      votes: 5 + Math.floor(r() * 40),
    });
  }
  let seq = 48_000_000;
  let last: string | null = null;
  const dirty = new Set<number>();
  const totals = () => {
    const t = { guarantees: 0, attendance: 0, votes: 0 };
    for (const c of per.values()) {
      t.guarantees += c.guarantees;
      t.attendance += c.attendance;
      t.votes += c.votes;
    }
    return t;
  };
  const committee = (id: number) => {
    const c = per.get(id) as Counts;
    return `{"committee_id":${id},"guarantees":${c.guarantees},"attendance":${c.attendance},"votes":${c.votes}}`;
  };
  const frame = (ids: Iterable<number>, base: string | null, cursor: string) => {
    const t = totals();
    return (
      `{"type":"dashboard_update","election_id":${opts.election},"cursor":"${cursor}","base":${base === null ? 'null' : `"${base}"`},` +
      `"totals":{"guarantees":${t.guarantees},"attendance":${t.attendance},"votes":${t.votes}},"committees":[${[...ids].map(committee).join(',')}]}`
    );
  };
  return {
    /** A row event touched this committee (counts move as the row mix would move them). */
    touch(id: number) {
      const c = per.get(id);
      if (!c) return;
      const roll = r();
      if (roll < 0.5) c.guarantees += r() < 0.95 ? 1 : -1;
      else if (roll < 0.8) c.attendance += 1;
      else c.votes += Math.floor(r() * 50);
      dirty.add(id);
    },
    /** The next coalesced delta (undefined when nothing changed). */
    delta(): string | undefined {
      if (dirty.size === 0) return undefined;
      seq += 97;
      const cursor = `4dbk.${seq.toString(36)}`;
      const f = frame(
        [...dirty].sort((a, b) => a - b),
        last,
        cursor,
      );
      dirty.clear();
      last = cursor;
      return f;
    },
    /** The full state at the last update's cursor (what a new subscriber gets first). */
    full(): string {
      return frame([...per.keys()], null, last ?? '4dbk.0');
    },
  };
}
