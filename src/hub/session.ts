import type { Claims } from '../events/topics.ts';
import type { Lease } from '../auth/limits.ts';

/** Per-socket state, kept in the uWebSockets.js user data. */
export type Session = {
  readonly id: number;
  readonly claims: Claims;
  readonly remote: string;
  /** Topics the client asked for (and may use). */
  readonly topics: Set<string>;
  /** uWS topics actually subscribed: a cover of `topics` in which no two overlap (events/topics.ts). */
  cover: Set<string>;
  closed: boolean;
  /** subscribe/unsubscribe run one at a time, in arrival order. */
  ops: Promise<void>;
  drained: (() => void) | undefined;
  badFrames: number;
  windowStart: number;
  windowCount: number;
  expiry: NodeJS.Timeout | undefined;
  /** This socket's share of its sub's connection allowance; released on close. */
  lease: Lease;
  /** Subscribe the claims' topics on open (false with `?subscribe=none`). */
  readonly autoSubscribe: boolean;
};

/** setTimeout's largest delay (2^31 - 1 ms, ~24.8 days); a longer one fires at once (Node: after 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Calls `fire` at `atMs` (epoch ms), however far away: a delay past setTimeout's range is
 * waited out in chunks, each re-arming the next. `s.expiry` always holds the pending chunk,
 * so `clearTimeout(s.expiry)` cancels it.
 */
export function armExpiry(s: { expiry: NodeJS.Timeout | undefined }, atMs: number, fire: () => void): void {
  const ms = atMs - Date.now();
  if (ms > MAX_TIMER_MS) {
    s.expiry = setTimeout(() => armExpiry(s, atMs, fire), MAX_TIMER_MS);
  } else {
    s.expiry = setTimeout(fire, Math.max(0, ms));
  }
}
