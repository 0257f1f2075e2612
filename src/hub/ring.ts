import { type Position, compare } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';

/** Bytes a frame costs to keep and to send: its UTF-8 length. */
export const frameBytes = (frame: string) => Buffer.byteLength(frame, 'utf8');

/**
 * The most recent published events, in order, bounded by a count and by the bytes of their
 * frames (whichever binds first; an event larger than the whole byte budget is not kept).
 * Invariant: it holds every published event with a position above `floor()`, so a catch-up
 * that reached the floor can finish from memory synchronously, in the same tick in which the
 * socket goes live. An evicted event's slot is cleared at once: nothing keeps its frame alive.
 */
export function createRing(limits: { events: number; bytes: number }) {
  // Slots before `start` are evicted (undefined); the array is compacted now and then, which
  // moves only pointers.
  let events: Array<OutboxEvent | undefined> = [];
  let sizes: number[] = [];
  let start = 0;
  let bytes = 0;
  let floor: Position | undefined;

  const at = (i: number) => events[i] as OutboxEvent;

  const firstAfter = (p: Position) => {
    let lo = start;
    let hi = events.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compare(at(mid).pos, p) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };

  const evict = () => {
    floor = at(start).pos;
    bytes -= sizes[start] as number;
    events[start] = undefined;
    start++;
    if (start > 1024 && start > events.length / 2) {
      events = events.slice(start);
      sizes = sizes.slice(start);
      start = 0;
    }
  };

  return {
    /** Set once, where the reader starts. */
    init(p: Position) {
      floor ??= p;
    },
    /** Forgets every event: the reader starts again at `p` (keys lost in a restart of PostgreSQL). */
    reset(p: Position) {
      events = [];
      sizes = [];
      start = 0;
      bytes = 0;
      floor = p;
    },
    /** Appends the next published event; `size` is its frame's byte count if already known. */
    push(e: OutboxEvent, size = frameBytes(e.frame)) {
      events.push(e);
      sizes.push(size);
      bytes += size;
      while (start < events.length && (events.length - start > limits.events || bytes > limits.bytes)) evict();
    },
    covers(p: Position): boolean {
      return floor !== undefined && compare(p, floor) >= 0;
    },
    /** Events after `p`, in order. Iterate synchronously: a push may compact the array. */
    *after(p: Position): Generator<OutboxEvent> {
      for (let i = firstAfter(p); i < events.length; i++) yield at(i);
    },
    /** What it holds now: for metrics and /admin/health. */
    size(): { events: number; bytes: number } {
      return { events: events.length - start, bytes };
    },
  };
}

export type Ring = ReturnType<typeof createRing>;
