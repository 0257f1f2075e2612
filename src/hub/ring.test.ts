import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Position, compare, encodeCursor } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import { createRing, frameBytes } from './ring.ts';

const KB = 1024;
const MB = 1024 * 1024;

/** An event at (100, n) whose frame is `bytes` long. */
const event = (n: number, bytes: number, topics: readonly string[] = ['election:1']): OutboxEvent => {
  const pos: Position = { seq: 100n, id: BigInt(n) };
  const cursor = encodeCursor(pos);
  const head = `{"type":"guarantee_update","n":${n},"pad":"`;
  const tail = `","cursor":"${cursor}"}`;
  return {
    pos,
    cursor,
    kind: 'guarantee',
    action: 'created',
    type: 'guarantee_update',
    electionId: '1',
    committeeId: '1',
    topic: null,
    topics,
    frame: head + 'x'.repeat(Math.max(0, bytes - head.length - tail.length)) + tail,
    committedAtMs: Date.now(),
    count: null,
    old: null,
  };
};
const ids = (events: Iterable<OutboxEvent>) => [...events].map((e) => Number(e.pos.id));

describe('replay ring', () => {
  it('is bounded by the bytes of its frames; it still holds every event above its floor', () => {
    const ring = createRing({ events: 1000, bytes: 5 * KB });
    ring.init({ seq: 100n, id: 0n });
    for (let n = 1; n <= 10; n++) ring.push(event(n, KB));
    expect(ring.size()).toEqual({ events: 5, bytes: 5 * KB });
    // Events 1..5 were evicted: the floor is event 5, and everything above it is here.
    expect(ring.covers({ seq: 100n, id: 5n })).toBe(true);
    expect(ring.covers({ seq: 100n, id: 4n })).toBe(false);
    expect(ids(ring.after({ seq: 100n, id: 5n }))).toEqual([6, 7, 8, 9, 10]);
    expect(ids(ring.after({ seq: 100n, id: 8n }))).toEqual([9, 10]);
  });

  it('keeps its event bound too, and keeps nothing of an event larger than its whole byte budget', () => {
    const ring = createRing({ events: 3, bytes: 10 * KB });
    ring.init({ seq: 100n, id: 0n });
    for (let n = 1; n <= 5; n++) ring.push(event(n, 100));
    expect(ring.size().events).toBe(3);
    expect(ids(ring.after({ seq: 100n, id: 2n }))).toEqual([3, 4, 5]);
    ring.push(event(6, 20 * KB));
    expect(ring.size()).toEqual({ events: 0, bytes: 0 });
    // A resume from before event 6 must come from PostgreSQL; from event 6 on, the ring covers.
    expect(ring.covers({ seq: 100n, id: 5n })).toBe(false);
    expect(ring.covers({ seq: 100n, id: 6n })).toBe(true);
    expect(ids(ring.after({ seq: 100n, id: 6n }))).toEqual([]);
  });

  it('covers nothing before init; init only sets the floor once', () => {
    const ring = createRing({ events: 10, bytes: MB });
    expect(ring.covers({ seq: 1n, id: 0n })).toBe(false);
    ring.init({ seq: 100n, id: 0n });
    ring.init({ seq: 50n, id: 0n });
    expect(ring.covers({ seq: 99n, id: 9n })).toBe(false);
    expect(ring.covers({ seq: 100n, id: 0n })).toBe(true);
  });

  it('counts a frame by its UTF-8 bytes', () => {
    expect(frameBytes('abc')).toBe(3);
    expect(frameBytes('é€')).toBe(5);
  });

  it('(property) bounds, floor and contents after any pushes: it holds exactly the events above its floor, within both limits', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 1, max: 4000 }),
        fc.array(fc.integer({ min: 60, max: 1500 }), { maxLength: 120 }),
        // Resume points, as indexes into the pushed events (or before all of them).
        fc.array(fc.integer({ min: -1, max: 120 }), { minLength: 1, maxLength: 10 }),
        (maxEvents, maxBytes, sizes, resumes) => {
          const ring = createRing({ events: maxEvents, bytes: maxBytes });
          const start: Position = { seq: 100n, id: 0n };
          ring.init(start);
          const pushed = sizes.map((size, i) => event(i + 1, size));
          let floor = start;
          for (const e of pushed) {
            ring.push(e);
            const held = ring.size();
            expect(held.events).toBeLessThanOrEqual(maxEvents);
            expect(held.bytes).toBeLessThanOrEqual(maxBytes);
            // What it holds is the newest events, contiguous: everything above the floor.
            const tail = [...ring.after(floor)];
            const n = Number(e.pos.id);
            const evicted = n - tail.length;
            if (evicted > 0) floor = (pushed[evicted - 1] as OutboxEvent).pos;
            expect(tail).toEqual(pushed.slice(evicted, n));
            expect(held).toEqual({ events: tail.length, bytes: tail.reduce((s, x) => s + frameBytes(x.frame), 0) });
            // It keeps as much as fits: the next older event would break a limit.
            const older = pushed[evicted - 1];
            if (older)
              expect(tail.length + 1 > maxEvents || held.bytes + frameBytes(older.frame) > maxBytes).toBe(true);
          }
          for (const r of resumes) {
            const p = r < 0 ? start : (pushed[Math.min(r, pushed.length - 1)]?.pos ?? start);
            expect(ring.covers(p)).toBe(compare(p, floor) >= 0);
            if (ring.covers(p)) expect([...ring.after(p)]).toEqual(pushed.filter((e) => compare(e.pos, p) > 0));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('(property) an evicted event is released at once: nothing keeps its frame alive', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 50 }),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 60 }),
        async (maxEvents, kbs) => {
          const ring = createRing({ events: maxEvents, bytes: 256 * KB });
          ring.init({ seq: 100n, id: 0n });
          const refs: Array<WeakRef<OutboxEvent>> = [];
          // Built in a function of its own, so no local variable keeps one alive.
          const fill = () => {
            kbs.forEach((kb, i) => {
              const e = event(i + 1, kb * KB);
              refs.push(new WeakRef(e));
              ring.push(e);
            });
          };
          fill();
          await new Promise((r) => setImmediate(r));
          gc();
          const held = ring.size().events;
          expect(refs.slice(0, refs.length - held).filter((r) => r.deref() !== undefined)).toHaveLength(0);
          expect(refs.slice(refs.length - held).every((r) => r.deref() !== undefined)).toBe(true);
        },
      ),
      { numRuns: 15 },
    );
  });

  it('compacts its storage without losing order (more than 1024 evictions)', () => {
    const ring = createRing({ events: 10, bytes: 100 * MB });
    ring.init({ seq: 100n, id: 0n });
    for (let n = 1; n <= 5000; n++) ring.push(event(n, 80));
    expect(ids(ring.after({ seq: 100n, id: 4990n }))).toEqual([
      4991, 4992, 4993, 4994, 4995, 4996, 4997, 4998, 4999, 5000,
    ]);
    expect(ring.covers({ seq: 100n, id: 4989n })).toBe(false);
  });
});
