// The totals book (src/cache/totals.ts) against a model: a table of rows changed by random
// inserts, updates that move rows between committees and elections, deletes, vote count
// changes, multi-row batches and TRUNCATEs, with computations begun, snapshotted (also ahead
// of the reader) and completed at random moments. After every step: the numbers of every
// live election equal the model's aggregate at the reader's position, and so does its
// snapshot body; clients that join at random moments and apply the frames by the contract's
// rules (base null: replace; base = the last applied cursor: overwrite listed committees;
// anything else: broken) never see a broken chain and hold the model's numbers after each cut.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Position, compare, encodeCursor } from '../src/events/position.ts';
import type { DashboardSnapshot } from '../src/events/schema.ts';
import { type Counts, type TotalsEvent, createTotalsBook, effectsOf } from '../src/cache/totals.ts';

type Kind = 'guarantee' | 'attendance' | 'vote';
type Row = { kind: Kind; e: string; c: string; count: number };
/** One change of the model's table: the row before and after (a TRUNCATE removes many). */
type Change = { pos: Position; removed: Array<[number, Row]>; added: Array<[number, Row]> };

const KINDS: Kind[] = ['guarantee', 'attendance', 'vote'];
const ELECTIONS = ['1', '2', '3'];
const COMMITTEES = ['1', '2', '3', '4', '9007199254740993']; // one beyond 2^53: exact as text
const FIELD = { guarantee: 'guarantees', attendance: 'attendance', vote: 'votes' } as const;

const pos = (n: number): Position => ({ seq: BigInt(n), id: 1n });

/** The aggregate of election `e` over the rows as of `at`. */
function aggregate(
  log: readonly Change[],
  at: Position,
  e: string,
): { totals: Counts; committees: Map<string, Counts> } {
  const rows = new Map<number, Row>();
  for (const ch of log) {
    if (compare(ch.pos, at) > 0) break;
    for (const [id] of ch.removed) rows.delete(id);
    for (const [id, r] of ch.added) rows.set(id, r);
  }
  const committees = new Map<string, Counts>();
  const totals: Counts = { guarantees: 0, attendance: 0, votes: 0 };
  for (const r of rows.values()) {
    if (r.e !== e) continue;
    const w = r.kind === 'vote' ? r.count : 1;
    let c = committees.get(r.c);
    if (!c) committees.set(r.c, (c = { guarantees: 0, attendance: 0, votes: 0 }));
    c[FIELD[r.kind]] += w;
    totals[FIELD[r.kind]] += w;
  }
  return { totals, committees };
}

/** Committee numbers equal, a committee with zeros being the same as no committee. */
function sameCommittees(a: Map<string, Counts>, b: Map<string, Counts>): boolean {
  const z = (c: Counts | undefined) => `${c?.guarantees ?? 0}/${c?.attendance ?? 0}/${c?.votes ?? 0}`;
  for (const k of new Set([...a.keys(), ...b.keys()])) if (z(a.get(k)) !== z(b.get(k))) return false;
  return true;
}

type Client = {
  cursor: string | undefined;
  totals: Counts | undefined;
  committees: Map<string, Counts>;
  broken: number;
  frames: number;
};
type Frame = {
  base: string | null;
  cursor: string;
  totals: Counts;
  committees: Array<Counts & { committee_id: number | string }>;
};

/** The contract's rules for applying a dashboard_update. */
function applyFrame(cl: Client, json: string): void {
  const f = JSON.parse(json) as Frame;
  if (cl.frames++ === 0 && f.base !== null) cl.broken++; // the first one must be the full state
  if (f.base === null) cl.committees = new Map();
  else if (f.base !== cl.cursor) {
    cl.broken++;
    return;
  }
  for (const c of f.committees)
    cl.committees.set(String(c.committee_id), { guarantees: c.guarantees, attendance: c.attendance, votes: c.votes });
  cl.totals = f.totals;
  cl.cursor = f.cursor;
}

const Op = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('insert' as const),
      kind: fc.constantFrom(...KINDS),
      e: fc.constantFrom(...ELECTIONS),
      c: fc.constantFrom(...COMMITTEES),
      count: fc.integer({ min: 0, max: 50 }),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('update' as const),
      pick: fc.nat(),
      e: fc.option(fc.constantFrom(...ELECTIONS)),
      c: fc.option(fc.constantFrom(...COMMITTEES)),
      count: fc.option(fc.integer({ min: 0, max: 50 })),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('truncate' as const), kind: fc.constantFrom(...KINDS) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('flush' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('begin' as const), e: fc.constantFrom(...ELECTIONS) }) },
  // Of the elections with a computation in progress, the pick-th.
  { weight: 3, arbitrary: fc.record({ op: fc.constant('snap' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('complete' as const), pick: fc.nat() }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('cut' as const),
      e: fc.constantFrom(...ELECTIONS),
      serialize: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('join' as const), e: fc.constantFrom(...ELECTIONS) }) },
);

type Step = typeof Op extends fc.Arbitrary<infer T> ? T : never;

function run(ops: Step[], opts: { maxBuffered?: number } = {}) {
  const book = createTotalsBook(opts);
  const rows = new Map<number, Row>(); // the database now (committed, maybe not read yet)
  const log: Change[] = [];
  let unread: TotalsEvent[] = []; // committed, not yet delivered by the reader
  let next = 1;
  let rowIds = 1;
  let reader: Position = pos(0);
  const snaps = new Map<string, { attempt: number; snap: DashboardSnapshot }>();
  const attempts = new Map<string, number>();
  const clients = new Map<string, Client[]>();
  for (const e of ELECTIONS.slice(0, 2)) attempts.set(e, book.begin(e, 'load', reader));

  const commit = (removed: Array<[number, Row]>, added: Array<[number, Row]>, event: Omit<TotalsEvent, 'pos'>) => {
    const p = pos(next++);
    for (const [id] of removed) rows.delete(id);
    for (const [id, r] of added) rows.set(id, r);
    log.push({ pos: p, removed, added });
    unread.push({ ...event, pos: p });
  };
  const flush = () => {
    if (unread.length === 0) return;
    const batch = unread;
    unread = [];
    reader = batch[batch.length - 1]?.pos ?? reader;
    const r = book.apply(batch);
    if (r.truncated) {
      // What the driver does: every held election is recomputed.
      for (const id of [...book.held()]) {
        book.invalidate(id);
        attempts.set(id, book.begin(id, 'load', reader));
        snaps.delete(id);
      }
    }
  };
  const snapshotOf = (e: string, at: Position): DashboardSnapshot => {
    const a = aggregate(log, at, e);
    return {
      election_id: Number(e),
      cursor: encodeCursor(at),
      totals: a.totals,
      committees: [...a.committees].map(([c, v]) => ({
        committee_id: Number.isSafeInteger(Number(c)) ? Number(c) : c,
        ...v,
      })),
    };
  };

  for (const o of ops) {
    switch (o.op) {
      case 'insert': {
        const id = rowIds++;
        const row: Row = { kind: o.kind, e: o.e, c: o.c, count: o.count };
        commit([], [[id, row]], {
          kind: o.kind,
          action: 'created',
          electionId: o.e,
          committeeId: o.c,
          count: o.kind === 'vote' ? o.count : null,
          old: null,
        });
        break;
      }
      case 'update': {
        const ids = [...rows.keys()];
        if (ids.length === 0) break;
        const id = ids[o.pick % ids.length] as number;
        const before = rows.get(id) as Row;
        const after: Row = { ...before, e: o.e ?? before.e, c: o.c ?? before.c, count: o.count ?? before.count };
        const vote = before.kind === 'vote';
        commit([[id, before]], [[id, after]], {
          kind: before.kind,
          action: 'updated',
          electionId: after.e,
          committeeId: after.c,
          count: vote ? after.count : null,
          old: { electionId: before.e, committeeId: before.c, count: vote ? before.count : null },
        });
        break;
      }
      case 'delete': {
        const ids = [...rows.keys()];
        if (ids.length === 0) break;
        const id = ids[o.pick % ids.length] as number;
        const r = rows.get(id) as Row;
        commit([[id, r]], [], {
          kind: r.kind,
          action: 'deleted',
          electionId: r.e,
          committeeId: r.c,
          count: r.kind === 'vote' ? r.count : null,
          old: null,
        });
        break;
      }
      case 'truncate': {
        const gone = [...rows].filter(([, r]) => r.kind === o.kind);
        commit(gone, [], {
          kind: o.kind,
          action: 'truncated',
          electionId: null,
          committeeId: null,
          count: null,
          old: null,
        });
        break;
      }
      case 'flush':
        flush();
        break;
      case 'begin':
        // A load when not live, else a verification; from the reader's position.
        attempts.set(o.e, book.begin(o.e, book.isLive(o.e) ? 'verify' : 'load', reader));
        snaps.delete(o.e);
        break;
      case 'snap': {
        // The database now: possibly ahead of the reader (committed rows not read yet).
        const waiting = ELECTIONS.filter((e) => book.attempt(e) !== undefined && !snaps.has(e));
        const e = waiting[o.pick % Math.max(1, waiting.length)];
        if (e === undefined) break;
        snaps.set(e, { attempt: book.attempt(e) as number, snap: snapshotOf(e, log[log.length - 1]?.pos ?? pos(0)) });
        break;
      }
      case 'complete': {
        const ready = [...snaps.keys()];
        const e = ready[o.pick % Math.max(1, ready.length)];
        if (e === undefined) break;
        const s = snaps.get(e);
        if (!s) break;
        const r = book.complete(e, s.attempt, s.snap, reader);
        if (r.outcome === 'ahead') break; // a verification waits for the reader to reach its snapshot
        snaps.delete(e);
        // No drift without lost events; a stale answer only with a tiny buffer.
        expect(r.outcome === 'drift' ? r : 'ok').toBe('ok');
        if (r.outcome === 'stale') expect(opts.maxBuffered).toBeDefined();
        break;
      }
      case 'cut': {
        // Cuts are made only once the reader has reached the snapshot (the driver waits).
        const c = book.liveCursor(o.e);
        if (!c || compare(reader, c) < 0) break;
        const r = book.cut(o.e, reader, o.serialize || (clients.get(o.e)?.length ?? 0) > 0);
        if (r?.frame) for (const cl of clients.get(o.e) ?? []) applyFrame(cl, r.frame);
        for (const cl of clients.get(o.e) ?? []) {
          if (cl.totals === undefined) continue;
          const m = aggregate(log, reader, o.e);
          expect(cl.totals).toEqual(m.totals);
          expect(sameCommittees(cl.committees, m.committees)).toBe(true);
        }
        break;
      }
      case 'join': {
        const c = book.liveCursor(o.e);
        const cl: Client = { cursor: undefined, totals: undefined, committees: new Map(), broken: 0, frames: 0 };
        if (c && compare(reader, c) >= 0) {
          const full = book.full(o.e);
          if (full) applyFrame(cl, full);
        }
        if (!clients.has(o.e)) clients.set(o.e, []);
        clients.get(o.e)?.push(cl);
        break;
      }
    }
    // Invariant: every live, settled election equals the model at the reader's position.
    for (const e of ELECTIONS) {
      const c = book.liveCursor(e);
      if (!c || compare(reader, c) < 0) continue;
      const n = book.numbers(e);
      const m = aggregate(log, reader, e);
      expect(n?.totals).toEqual(m.totals);
      expect(sameCommittees(n?.committees ?? new Map(), m.committees)).toBe(true);
      const body = JSON.parse(book.snapshot(e, reader) ?? '{}') as DashboardSnapshot;
      expect(body.totals).toEqual(m.totals);
    }
  }
  for (const cls of clients.values()) for (const cl of cls) expect(cl.broken).toBe(0);
}

describe('totals book', () => {
  it('equals the model after every step; clients applying the frames by the rules never break their chain', () => {
    fc.assert(
      fc.property(fc.array(Op, { minLength: 10, maxLength: 150, size: 'max' }), (ops) => run(ops)),
      { numRuns: 300 },
    );
  });

  it('a computation that buffered too many events meanwhile is stale, never wrong', () => {
    fc.assert(
      fc.property(fc.array(Op, { minLength: 10, maxLength: 120, size: 'max' }), (ops) => run(ops, { maxBuffered: 3 })),
      { numRuns: 150 },
    );
  });

  it('effects: a moved row leaves its old committee and election; an unmoved update of a vote moves only its count', () => {
    const base = { pos: pos(1), kind: 'vote', action: 'updated' } as const;
    expect(
      effectsOf({
        ...base,
        electionId: '2',
        committeeId: '7',
        count: 5,
        old: { electionId: '1', committeeId: '3', count: 4 },
      }),
    ).toEqual([
      { election: '2', committee: '7', field: 'votes', delta: 5 },
      { election: '1', committee: '3', field: 'votes', delta: -4 },
    ]);
    expect(
      effectsOf({
        ...base,
        electionId: '2',
        committeeId: '7',
        count: 5,
        old: { electionId: '2', committeeId: '7', count: 4 },
      }),
    ).toEqual([{ election: '2', committee: '7', field: 'votes', delta: 1 }]);
    expect(
      effectsOf({
        ...base,
        kind: 'guarantee',
        electionId: '2',
        committeeId: '7',
        count: null,
        old: { electionId: '2', committeeId: '7', count: null },
      }),
    ).toEqual([]);
    expect(effectsOf({ ...base, kind: 'app', electionId: '2', committeeId: '7', count: null, old: null })).toEqual([]);
  });

  it('verification finds drift (an event the stream never brought), counts the committees and corrects them into the next delta', () => {
    const book = createTotalsBook();
    const snap = (cursor: Position, g: number): DashboardSnapshot => ({
      election_id: 1,
      cursor: encodeCursor(cursor),
      totals: { guarantees: g, attendance: 0, votes: 0 },
      committees: [{ committee_id: 7, guarantees: g, attendance: 0, votes: 0 }],
    });
    const a = book.begin('1', 'load', pos(0));
    expect(book.complete('1', a, snap(pos(1), 2), pos(0)).outcome).toBe('loaded');
    const first = JSON.parse(book.cut('1', pos(1), true)?.frame ?? '{}') as Frame;
    expect(first.base).toBeNull();
    // The database has one more guarantee than the stream said.
    const v = book.begin('1', 'verify', pos(1));
    book.apply([
      { pos: pos(2), kind: 'guarantee', action: 'created', electionId: '1', committeeId: '7', count: null, old: null },
    ]);
    expect(book.complete('1', v, snap(pos(3), 5), pos(2)).outcome).toBe('ahead'); // not at the reader's position yet
    const r = book.complete('1', v, snap(pos(1), 4), pos(2)); // at pos 1 the database had 4; with the event at 2: 5
    expect(r).toEqual({ outcome: 'drift', committees: ['7'] });
    expect(book.numbers('1')?.totals.guarantees).toBe(5);
    const delta = JSON.parse(book.cut('1', pos(2), true)?.frame ?? '{}') as Frame;
    expect(delta.base).toBe(first.cursor);
    expect(delta.committees).toEqual([{ committee_id: 7, guarantees: 5, attendance: 0, votes: 0 }]);
  });
});
