import { type Position, compare } from '../db/cursor.ts';
import type { HubEvent } from '../db/outbox.ts';

/**
 * The most recent published events, in order. Invariant: it holds every published event
 * with a position above `floor()`, so a catch-up that reached the floor can finish from
 * memory synchronously, in the same tick in which the socket goes live.
 */
export function createRing(capacity: number) {
  let events: HubEvent[] = [];
  let start = 0;
  let floor: Position | undefined;

  const firstAfter = (p: Position) => {
    let lo = start;
    let hi = events.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compare((events[mid] as HubEvent).pos, p) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };

  return {
    /** Set once, where the reader starts. */
    init(p: Position) {
      floor ??= p;
    },
    push(e: HubEvent) {
      events.push(e);
      if (events.length - start > capacity) {
        floor = (events[start] as HubEvent).pos;
        start++;
        if (start > 4096 && start > events.length / 2) {
          events = events.slice(start);
          start = 0;
        }
      }
    },
    covers(p: Position): boolean {
      return floor !== undefined && compare(p, floor) >= 0;
    },
    *after(p: Position): Generator<HubEvent> {
      for (let i = firstAfter(p); i < events.length; i++) yield events[i] as HubEvent;
    },
  };
}

export type Ring = ReturnType<typeof createRing>;
