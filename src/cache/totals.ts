/*
 * Dashboard totals maintained from the event stream (issue 11): a pure, synchronous state
 * machine, driven by src/cache/live-dashboards.ts (which owns timers, computations and sockets).
 *
 * Per held election it keeps every committee's numbers and the election's totals, so that at
 * any moment (between reader batches) state = snapshot + every event after the snapshot's
 * cursor, i.e. the database as of the reader's position:
 *   - a computation is started with `begin`: from then on the election's events are buffered;
 *     when its snapshot (cursor c) arrives, `complete` applies the buffered events after c.
 *     The snapshot must be at least as new as the position at `begin` (else 'stale'): the
 *     events before `begin` are not buffered, so an older snapshot could not be completed;
 *   - `apply` applies each ordered batch: created +1, deleted −1, updated −old +new, votes by
 *     `count`; a row that moves between committees or elections moves its contribution;
 *   - a verification is a computation while live: its result, completed the same way, is
 *     compared with the live numbers at the same position; any difference is drift, corrected.
 *
 * Updates are cut from it: `cut` ends an interval and returns the `dashboard_update` frame
 * for it: `base` the previous cut's cursor (null after a (re)load: the full state), the
 * committees whose numbers changed since (absolute), the totals. `full` is the state at the
 * last cut, for a socket that starts receiving the election (the next cut's delta chains on
 * it): the numbers of committees changed since the cut are kept (`before`), so it needs no
 * copy of the state per cut. Every frame is serialized once per election, never per socket.
 *
 * Memory per held election: O(committees) plus the events buffered during a computation
 * (bounded: past `maxBuffered` the computation is 'stale' and is redone from a newer position).
 */
import { type Position, compare, decodeCursor, encodeCursor } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import type { DashboardSnapshot } from '../events/schema.ts';
import { type Id, compareIds, idValue } from '../events/topics.ts';

export type Counts = { guarantees: number; attendance: number; votes: number };
export type Field = keyof Counts;

/** The watched kinds that count (CONTRACT section 4): rows of guarantees and attendance, votes by `count`. */
export const FIELD_OF_KIND: Readonly<Record<string, Field>> = {
  guarantee: 'guarantees',
  attendance: 'attendance',
  vote: 'votes',
};

/** What the totals read of an outbox event. */
export type TotalsEvent = Pick<OutboxEvent, 'pos' | 'kind' | 'action' | 'electionId' | 'committeeId' | 'count' | 'old'>;

/** One event's effect on one committee of one election. */
export type Effect = { readonly election: Id; readonly committee: Id; readonly field: Field; readonly delta: number };

/**
 * The effects of one event (at most two: an update adds its new row and removes its old one;
 * when both fall on the same committee with the same weight they cancel and none is returned).
 * A row without an election or a committee counts nowhere (the snapshot skips it too).
 */
export function effectsOf(e: TotalsEvent): Effect[] {
  const field = FIELD_OF_KIND[e.kind];
  if (!field) return [];
  const weight = (count: number | null) => (e.kind === 'vote' ? (count ?? 0) : 1);
  const one = (election: Id | null, committee: Id | null, delta: number): Effect[] =>
    election === null || committee === null || delta === 0 ? [] : [{ election, committee, field, delta }];
  switch (e.action) {
    case 'created':
      return one(e.electionId, e.committeeId, weight(e.count));
    case 'deleted':
      return one(e.electionId, e.committeeId, -weight(e.count));
    case 'updated': {
      const add = weight(e.count);
      const o = e.old;
      if (!o) return one(e.electionId, e.committeeId, add);
      const sub = weight(o.count);
      if (o.electionId === e.electionId && o.committeeId === e.committeeId)
        return one(e.electionId, e.committeeId, add - sub);
      return [...one(e.electionId, e.committeeId, add), ...one(o.electionId, o.committeeId, -sub)];
    }
    default:
      return [];
  }
}

/** A TRUNCATE of a watched table that counts: every held election must be recomputed. */
export const isTruncate = (e: TotalsEvent) => e.action === 'truncated' && FIELD_OF_KIND[e.kind] !== undefined;

const zero = (): Counts => ({ guarantees: 0, attendance: 0, votes: 0 });
const same = (a: Counts | undefined, b: Counts | undefined) =>
  (a?.guarantees ?? 0) === (b?.guarantees ?? 0) &&
  (a?.attendance ?? 0) === (b?.attendance ?? 0) &&
  (a?.votes ?? 0) === (b?.votes ?? 0);

type Buffered = { pos: Position; committee: Id; field: Field; delta: number };

type Pending = {
  readonly attempt: number;
  readonly purpose: 'load' | 'verify';
  /** The position at `begin`: events after it are buffered, so the snapshot must not be older. */
  readonly from: Position;
  buffer: Buffered[];
  overflow: boolean;
};

type Live = {
  committees: Map<Id, Counts>;
  totals: Counts;
  /** The snapshot's cursor: events at or before it were already in it. */
  cursor: Position;
};

type Cut = { cursor: string; totals: Counts };

type ElectionState = {
  live: Live | undefined;
  pending: Pending | undefined;
  /** The last update cut (undefined: none since the last load, so the next cut is the full state). */
  cut: Cut | undefined;
  /** Committees changed since the cut: their numbers at the cut (null: not there yet). */
  before: Map<Id, Counts | null>;
  /** The full frame at the cut, serialized once, when first asked for. */
  fullFrame: string | undefined;
  /** Bumped on every change of the numbers (caches the snapshot body below). */
  version: number;
  body: { version: number; json: string } | undefined;
};

export type CompleteResult =
  | { outcome: 'loaded' }
  | { outcome: 'verified' }
  | { outcome: 'drift'; committees: Id[] }
  /** Older than the position at `begin`, or too many events buffered meanwhile: compute again. */
  | { outcome: 'stale' }
  /** Another computation (a resync) took over, or the election was dropped: ignore the result. */
  | { outcome: 'superseded' }
  /** A verification's snapshot is ahead of the reader: complete it again once the reader reached `cursor`. */
  | { outcome: 'ahead'; cursor: Position };

export type Cutting = { cursor: string; frame: string | undefined } | undefined;

export type TotalsBook = ReturnType<typeof createTotalsBook>;

const countsJson = (c: Counts) => `{"guarantees":${c.guarantees},"attendance":${c.attendance},"votes":${c.votes}}`;
const committeeJson = (id: Id, c: Counts) =>
  `{"committee_id":${JSON.stringify(idValue(id))},"guarantees":${c.guarantees},"attendance":${c.attendance},"votes":${c.votes}}`;

export function createTotalsBook(opts: { maxBuffered?: number } = {}) {
  const maxBuffered = opts.maxBuffered ?? 200_000;
  const held = new Map<Id, ElectionState>();
  let attempts = 0;

  const step = (st: ElectionState, live: Live, committee: Id, field: Field, delta: number) => {
    let c = live.committees.get(committee);
    if (!st.before.has(committee)) st.before.set(committee, c ? { ...c } : null);
    if (!c) live.committees.set(committee, (c = zero()));
    c[field] += delta;
    live.totals[field] += delta;
    st.version++;
  };

  /** The snapshot plus the buffered events after its cursor. */
  const build = (snap: DashboardSnapshot, cursor: Position, buffer: readonly Buffered[]): Live => {
    const committees = new Map<Id, Counts>();
    const totals = zero();
    for (const c of snap.committees) {
      const v = { guarantees: c.guarantees, attendance: c.attendance, votes: c.votes };
      committees.set(String(c.committee_id), v);
      totals.guarantees += v.guarantees;
      totals.attendance += v.attendance;
      totals.votes += v.votes;
    }
    for (const b of buffer) {
      if (compare(b.pos, cursor) <= 0) continue;
      let c = committees.get(b.committee);
      if (!c) committees.set(b.committee, (c = zero()));
      c[b.field] += b.delta;
      totals[b.field] += b.delta;
    }
    return { committees, totals, cursor };
  };

  const sortedIds = (m: Map<Id, unknown>) => [...m.keys()].sort(compareIds);

  return {
    /**
     * Applies one ordered batch of the reader. Returns the live elections whose numbers
     * changed, the elections touched that are not held, and whether a counted table was
     * truncated (the caller recomputes every held election: a TRUNCATE has no rows to apply).
     */
    apply(events: readonly TotalsEvent[]): { changed: Set<Id>; untracked: Set<Id>; truncated: boolean } {
      const changed = new Set<Id>();
      const untracked = new Set<Id>();
      let truncated = false;
      for (const e of events) {
        if (isTruncate(e)) {
          truncated = true;
          continue;
        }
        for (const x of effectsOf(e)) {
          const st = held.get(x.election);
          if (!st) {
            untracked.add(x.election);
            continue;
          }
          // Events at or before the snapshot's cursor are in it already (the reader may be behind it).
          if (st.live && compare(e.pos, st.live.cursor) > 0) {
            step(st, st.live, x.committee, x.field, x.delta);
            changed.add(x.election);
          }
          const p = st.pending;
          if (p && !p.overflow) {
            if (p.buffer.length >= maxBuffered) {
              p.overflow = true;
              p.buffer = [];
            } else p.buffer.push({ pos: e.pos, committee: x.committee, field: x.field, delta: x.delta });
          }
        }
      }
      return { changed, untracked, truncated };
    },

    has: (id: Id) => held.has(id),
    isLive: (id: Id) => held.get(id)?.live !== undefined,
    /** The cursor of the live numbers' snapshot (they are complete once the reader has reached it). */
    liveCursor: (id: Id): Position | undefined => held.get(id)?.live?.cursor,
    computing: (id: Id): 'load' | 'verify' | undefined => held.get(id)?.pending?.purpose,
    held: () => held.keys(),
    size: () => held.size,

    /**
     * Starts a computation of `id` (holding the election if it was not): events from now on
     * are buffered for it. A 'load' replaces the numbers when it completes; a 'verify' checks
     * them. Starting one supersedes any computation in progress. Returns its attempt number.
     */
    begin(id: Id, purpose: 'load' | 'verify', from: Position): number {
      let st = held.get(id);
      if (!st) {
        st = {
          live: undefined,
          pending: undefined,
          cut: undefined,
          before: new Map(),
          fullFrame: undefined,
          version: 0,
          body: undefined,
        };
        held.set(id, st);
      }
      const attempt = ++attempts;
      st.pending = { attempt, purpose, from, buffer: [], overflow: false };
      return attempt;
    },

    /** The attempt in progress for `id`, if any. */
    attempt: (id: Id): number | undefined => held.get(id)?.pending?.attempt,

    /**
     * A computation's snapshot arrived; `reader` is the reader's position (every event up to
     * it applied). A verification compares at the same position, so one whose snapshot is
     * ahead of the reader is 'ahead': call again once the reader has reached its cursor.
     */
    complete(id: Id, attempt: number, snap: DashboardSnapshot, reader: Position): CompleteResult {
      const st = held.get(id);
      const p = st?.pending;
      if (!st || !p || p.attempt !== attempt) return { outcome: 'superseded' };
      const cursor = decodeCursor(snap.cursor);
      if (cursor && p.purpose === 'verify' && st.live && !p.overflow && compare(cursor, reader) > 0)
        return { outcome: 'ahead', cursor };
      st.pending = undefined;
      if (!cursor || compare(cursor, p.from) < 0 || p.overflow) return { outcome: 'stale' };
      const fresh = build(snap, cursor, p.buffer);
      if (p.purpose === 'load' || !st.live) {
        st.live = fresh;
        st.cut = undefined;
        st.before.clear();
        st.fullFrame = undefined;
        st.version++;
        return { outcome: 'loaded' };
      }
      // Both are "the database as of the reader's position": compare them committee by committee.
      const live = st.live;
      const drifted: Id[] = [];
      for (const [c, v] of fresh.committees) if (!same(live.committees.get(c), v)) drifted.push(c);
      for (const [c, v] of live.committees) if (!fresh.committees.has(c) && !same(v, undefined)) drifted.push(c);
      if (drifted.length === 0) return { outcome: 'verified' };
      for (const c of drifted) {
        const now = live.committees.get(c);
        if (!st.before.has(c)) st.before.set(c, now ? { ...now } : null);
        const want = fresh.committees.get(c) ?? zero();
        live.committees.set(c, { ...want });
      }
      live.totals = { ...fresh.totals };
      st.version++;
      return { outcome: 'drift', committees: drifted.sort(compareIds) };
    },

    /** A computation failed: stop buffering for it (the numbers, if live, stay live). */
    fail(id: Id, attempt: number): void {
      const st = held.get(id);
      if (st?.pending?.attempt === attempt) st.pending = undefined;
    },

    /** The chain broke (TRUNCATE, a gap, a change of what is watched): the numbers are void until reloaded. */
    invalidate(id: Id): void {
      const st = held.get(id);
      if (!st) return;
      st.live = undefined;
      st.pending = undefined;
      st.cut = undefined;
      st.before.clear();
      st.fullFrame = undefined;
      st.body = undefined;
      st.version++;
    },

    drop(id: Id): void {
      held.delete(id);
    },

    /**
     * Ends the current interval at `at` (a position at or after every applied event): returns
     * its cursor and, when `serialize`, its `dashboard_update` frame: the full state (base null)
     * after a load, else the committees changed since the last cut. Undefined when the
     * election is not live, or nothing changed since the last cut (no new cut is made).
     * Without `serialize` (nobody receives it) the cut is still made: a socket arriving later
     * gets `full` at it.
     */
    cut(id: Id, at: Position, serialize: boolean): Cutting {
      const st = held.get(id);
      const live = st?.live;
      if (!st || !live) return undefined;
      const cursor = encodeCursor(compare(at, live.cursor) >= 0 ? at : live.cursor);
      const json = `{"type":"dashboard_update","election_id":${JSON.stringify(idValue(id))},"cursor":"${cursor}",`;
      if (!st.cut) {
        const frame = serialize
          ? `${json}"base":null,"totals":${countsJson(live.totals)},"committees":[${sortedIds(live.committees)
              .map((c) => committeeJson(c, live.committees.get(c) as Counts))
              .join(',')}]}`
          : undefined;
        st.cut = { cursor, totals: { ...live.totals } };
        st.before.clear();
        st.fullFrame = frame;
        return { cursor, frame };
      }
      const listed: Id[] = [];
      for (const [c, b] of st.before) {
        const now = live.committees.get(c);
        if (b === null ? now !== undefined : !same(b, now)) listed.push(c);
      }
      if (listed.length === 0 && same(st.cut.totals, live.totals)) {
        st.before.clear();
        return undefined;
      }
      const frame = serialize
        ? `${json}"base":"${st.cut.cursor}","totals":${countsJson(live.totals)},"committees":[${listed
            .sort(compareIds)
            .map((c) => committeeJson(c, live.committees.get(c) as Counts))
            .join(',')}]}`
        : undefined;
      st.cut = { cursor, totals: { ...live.totals } };
      st.before.clear();
      st.fullFrame = undefined;
      return { cursor, frame };
    },

    /** Whether anything changed since the last cut (or no cut was made since the last load). */
    dirty(id: Id): boolean {
      const st = held.get(id);
      if (!st?.live) return false;
      return !st.cut || st.before.size > 0 || !same(st.cut.totals, st.live.totals);
    },

    /**
     * The full state at the last cut (base null, its cursor), serialized once per cut: what a
     * socket that starts receiving the election gets first. Undefined before the first cut.
     */
    full(id: Id): string | undefined {
      const st = held.get(id);
      const live = st?.live;
      if (!st || !live || !st.cut) return undefined;
      if (st.fullFrame !== undefined) return st.fullFrame;
      const parts: string[] = [];
      for (const c of sortedIds(live.committees)) {
        const b = st.before.has(c) ? st.before.get(c) : live.committees.get(c);
        if (b) parts.push(committeeJson(c, b));
      }
      st.fullFrame =
        `{"type":"dashboard_update","election_id":${JSON.stringify(idValue(id))},"cursor":"${st.cut.cursor}","base":null,` +
        `"totals":${countsJson(st.cut.totals)},"committees":[${parts.join(',')}]}`;
      return st.fullFrame;
    },

    /**
     * The snapshot body of GET /dashboard/{id} at `at` (a position at or after every applied
     * event), cached until the numbers change: an older body's cursor stays right, as no
     * event of this election came after it.
     */
    snapshot(id: Id, at: Position): string | undefined {
      const st = held.get(id);
      const live = st?.live;
      if (!st || !live) return undefined;
      if (st.body?.version === st.version) return st.body.json;
      const cursor = encodeCursor(compare(at, live.cursor) >= 0 ? at : live.cursor);
      const json =
        `{"election_id":${JSON.stringify(idValue(id))},"cursor":"${cursor}","totals":${countsJson(live.totals)},` +
        `"committees":[${sortedIds(live.committees)
          .map((c) => committeeJson(c, live.committees.get(c) as Counts))
          .join(',')}]}`;
      st.body = { version: st.version, json };
      return json;
    },

    /** The live numbers (tests). */
    numbers(id: Id): { totals: Counts; committees: Map<Id, Counts> } | undefined {
      const live = held.get(id)?.live;
      return live
        ? { totals: { ...live.totals }, committees: new Map([...live.committees].map(([k, v]) => [k, { ...v }])) }
        : undefined;
    },
  };
}
