import type { Claims } from '../events/topics.ts';
import type { Lease } from '../auth/limits.ts';

/**
 * Per-socket state, kept in the uWebSockets.js user data. Read anywhere in src/hub; written only
 * through the functions of this module (the fields are read-only everywhere else).
 */
export type Session = {
  readonly id: number;
  readonly claims: Claims;
  readonly remote: string;
  /** Topics the client asked for (and may use). */
  readonly topics: ReadonlySet<string>;
  /** uWS topics actually subscribed: a cover of `topics` in which no two overlap (events/topics.ts). */
  readonly cover: ReadonlySet<string>;
  /** Set by the close handler, or just before the hub closes the socket itself: nothing is sent after it. */
  readonly closed: boolean;
  /** subscribe/unsubscribe run one at a time, in arrival order. */
  readonly ops: Promise<void>;
  /** Called by the uWS drain handler while a replay waits for the socket to drain. */
  readonly drained: (() => void) | undefined;
  /** Error answers so far (a client that keeps sending bad frames is closed). */
  readonly badFrames: number;
  /** The rate limit's current one-second window and the frames counted in it. */
  readonly windowStart: number;
  readonly windowCount: number;
  /** The pending token-expiry timer (see `armExpiry`). */
  readonly expiry: NodeJS.Timeout | undefined;
  /** This socket's share of its sub's connection allowance; released on close. */
  readonly lease: Lease;
  /** Subscribe the claims' topics on open (false with `?subscribe=none`). */
  readonly autoSubscribe: boolean;
};

/** The same fields, writable: only this module sees a session so. */
type State = { -readonly [K in keyof Session]: Session[K] } & { topics: Set<string>; cover: Set<string> };
const w = (s: Session) => s as State;

/** A new socket's state, made at its upgrade. */
export function createSession(i: Pick<Session, 'id' | 'claims' | 'remote' | 'lease' | 'autoSubscribe'>): Session {
  const s: State = {
    ...i,
    topics: new Set(),
    cover: new Set(),
    closed: false,
    ops: Promise.resolve(),
    drained: undefined,
    badFrames: 0,
    windowStart: 0,
    windowCount: 0,
    expiry: undefined,
  };
  return s;
}

/** Nothing more is sent to this socket. */
export function markClosed(s: Session): void {
  w(s).closed = true;
}

export function addTopics(s: Session, topics: Iterable<string>): void {
  for (const t of topics) w(s).topics.add(t);
}

export function removeTopics(s: Session, topics: Iterable<string>): void {
  for (const t of topics) w(s).topics.delete(t);
}

/** Records the uWS topics the socket is subscribed to now (the caller subscribed them). */
export function setCover(s: Session, cover: Set<string>): void {
  w(s).cover = cover;
}

export function addCover(s: Session, topic: string): void {
  w(s).cover.add(topic);
}

/** True if the topic was in the cover. */
export function removeCover(s: Session, topic: string): boolean {
  return w(s).cover.delete(topic);
}

/** Queues a subscription change behind the ones before it: `next` gets the queue so far and returns the new tail. */
export function enqueue(s: Session, next: (ops: Promise<void>) => Promise<void>): void {
  w(s).ops = next(s.ops);
}

/** What the next uWS drain of this socket calls (undefined: nothing). */
export function onDrained(s: Session, fn: (() => void) | undefined): void {
  w(s).drained = fn;
}

/** Counts one error answer; returns how many the socket has had. */
export function strike(s: Session): number {
  return ++w(s).badFrames;
}

/** Counts one client frame at `now`; false once more than `perSecond` came within the current second. */
export function withinRate(s: Session, now: number, perSecond: number): boolean {
  const x = w(s);
  if (now - x.windowStart >= 1000) {
    x.windowStart = now;
    x.windowCount = 0;
  }
  return ++x.windowCount <= perSecond;
}

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
