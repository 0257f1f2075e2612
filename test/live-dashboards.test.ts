// The live-dashboards driver alone (no services): fake computations, a fake reader position.
import { describe, expect, it } from 'vitest';
import { createLiveDashboards } from '../src/cache/live-dashboards.ts';
import { type Position, compare, encodeCursor } from '../src/events/position.ts';
import type { TotalsEvent } from '../src/cache/totals.ts';
import { createLogger } from '../src/log.ts';
import { createMetrics } from '../src/metrics/index.ts';
import { waitUntil } from './support/hub.ts';

const at = (n: number): Position => ({ seq: BigInt(n), id: 0n });
const snapshot = (cursor: Position, guarantees: number) =>
  JSON.stringify({
    election_id: 1,
    cursor: encodeCursor(cursor),
    totals: { guarantees, attendance: 0, votes: 0 },
    committees: [{ committee_id: 7, guarantees, attendance: 0, votes: 0 }],
  });
const created = (n: number): TotalsEvent => ({
  pos: { seq: BigInt(n), id: 1n },
  kind: 'guarantee',
  action: 'created',
  electionId: '1',
  committeeId: '7',
  count: null,
  old: null,
});

function setup(opts: { verifyMs?: number } = {}) {
  let position: Position = at(5);
  const waiters: Array<{ p: Position; resolve: (ok: boolean) => void }> = [];
  const published: Array<{ base: string | null; cursor: string; totals: { guarantees: number } }> = [];
  const computed: Array<{ reason: string; min: Position; fresh: boolean }> = [];
  let watched = 'a';
  let answer: (min: Position) => Promise<string | null> = async () => snapshot(at(10), 3);
  const live = createLiveDashboards({
    compute: (_id, o) => {
      computed.push({ reason: o.reason, min: o.min, fresh: o.fresh });
      return answer(o.min);
    },
    position: () => position,
    delivered: (p) =>
      compare(position, p) >= 0
        ? Promise.resolve(true)
        : new Promise<boolean>((resolve) => waiters.push({ p, resolve })),
    subscribers: () => 1,
    interested: () => false,
    publish: (_id, frame) => published.push(JSON.parse(frame) as (typeof published)[number]),
    debounceMs: 30,
    verifyMs: opts.verifyMs ?? 0,
    watched: async () => watched,
    watchedCheckMs: 50,
    metrics: createMetrics(),
    log: createLogger('silent'),
  });
  /** The reader reads up to `p`, delivering `events` on the way. */
  const read = (p: Position, events: TotalsEvent[] = []) => {
    position = p;
    if (events.length > 0) live.apply(events);
    for (const w of waiters.splice(0)) {
      if (compare(position, w.p) >= 0) w.resolve(true);
      else waiters.push(w);
    }
  };
  return {
    live,
    published,
    computed,
    read,
    setAnswer: (f: typeof answer) => (answer = f),
    setWatched: (w: string) => (watched = w),
  };
}

describe('live dashboards', () => {
  it('an update never goes out before the reader has reached its snapshot; steady events cost no computation', async () => {
    const t = setup();
    expect(t.live.joined('1')).toBeUndefined(); // not loaded: the first update will be the full state
    await waitUntil(() => t.computed.length === 1, 2000, 'the first computation');
    expect(t.computed[0]?.reason).toBe('first_use');
    await new Promise((r) => setTimeout(r, 100));
    expect(t.published).toEqual([]); // the snapshot (at 10) is ahead of the reader (at 5)
    t.read(at(8), [created(7)]); // at or before the snapshot: already in it
    t.read(at(12), [created(11)]);
    await waitUntil(() => t.published.length >= 1, 2000, 'the full state');
    expect(t.published[0]).toMatchObject({ base: null, totals: { guarantees: 4 } });
    t.read(at(14), [created(13)]);
    await waitUntil(() => t.published.length >= 2, 2000, 'a delta');
    expect(t.published[1]).toMatchObject({ base: t.published[0]?.cursor, totals: { guarantees: 5 } });
    expect(JSON.parse(t.live.joined('1') ?? '{}')).toMatchObject({
      base: null,
      cursor: t.published[1]?.cursor,
      totals: { guarantees: 5 },
    });
    expect(JSON.parse((await t.live.snapshot('1')) ?? '{}')).toMatchObject({ totals: { guarantees: 5 } });
    expect(t.computed.length).toBe(1);
    t.live.stop();
  });

  it('a TRUNCATE while a load waits for the reader starts another load (the numbers are never left void)', async () => {
    const t = setup();
    t.live.joined('1');
    await waitUntil(() => t.computed.length === 1, 2000, 'the first computation');
    // The load waits for the reader (at 5) to reach its snapshot (at 10); a TRUNCATE comes first.
    await new Promise((r) => setTimeout(r, 20));
    t.setAnswer(async (min) => snapshot(min, 0));
    t.read(at(6), [
      {
        pos: { seq: 6n, id: 1n },
        kind: 'guarantee',
        action: 'truncated',
        electionId: null,
        committeeId: null,
        count: null,
        old: null,
      },
    ]);
    t.read(at(21));
    await waitUntil(() => t.published.length >= 1, 2000, 'the full state after the TRUNCATE');
    expect(t.computed.map((c) => c.reason)).toEqual(['first_use', 'resync']);
    expect(t.published[t.published.length - 1]).toMatchObject({ base: null, totals: { guarantees: 0 } });
    t.live.stop();
  });

  it('verification compares at the same position and corrects drift into the next delta', async () => {
    const t = setup({ verifyMs: 200 });
    t.setAnswer(async () => snapshot(at(5), 3));
    t.live.joined('1');
    await waitUntil(() => t.published.length >= 1, 2000, 'the full state');
    // The database gained 2 rows the stream never carried; the verification's snapshot is ahead of the reader.
    t.setAnswer(async () => snapshot(at(30), 6));
    await waitUntil(() => t.computed.length >= 2, 3000, 'a verification');
    expect(t.computed[1]?.reason).toBe('verify');
    t.read(at(30), [created(25)]); // the one event the stream did carry
    await waitUntil(() => t.published.some((f) => f.totals.guarantees === 6), 3000, 'the corrected totals');
    const last = t.published[t.published.length - 1];
    expect(last?.base).toBe(t.published[t.published.length - 2]?.cursor);
    t.live.stop();
  });

  it('a verification and a resync after a change of hub.watched compute anew; first use and a TRUNCATE may share', async () => {
    const t = setup({ verifyMs: 300 });
    t.setAnswer(async () => snapshot(at(5), 3));
    t.live.joined('1');
    await waitUntil(() => t.published.length >= 1, 2000, 'the full state');
    await waitUntil(() => t.computed.some((c) => c.reason === 'verify'), 3000, 'a verification');
    // What they look for moves no cursor: a snapshot computed before it has the cursor asked for.
    t.setWatched('b');
    await waitUntil(() => t.computed.some((c) => c.reason === 'resync'), 3000, 'the resync');
    t.read(at(6), [
      {
        pos: { seq: 6n, id: 1n },
        kind: 'guarantee',
        action: 'truncated',
        electionId: null,
        committeeId: null,
        count: null,
        old: null,
      },
    ]);
    t.setAnswer(async () => snapshot(at(6), 0));
    await waitUntil(
      () => t.computed.filter((c) => c.reason === 'resync').length >= 2,
      3000,
      'the resync after the TRUNCATE',
    );
    t.live.stop();
    const seen = t.computed.map((c) => `${c.reason}:${c.fresh}`);
    expect(seen[0]).toBe('first_use:false');
    expect(seen).toContain('verify:true');
    expect(seen.filter((x) => x.startsWith('verify:'))).not.toContain('verify:false');
    const resyncs = seen.filter((x) => x.startsWith('resync:'));
    expect(resyncs.slice(0, 2)).toEqual(['resync:true', 'resync:false']);
  });
});
