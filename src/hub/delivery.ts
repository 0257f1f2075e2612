import type pg from 'pg';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import { type Position, compare } from '../db/cursor.ts';
import { type HubEvent, type TopicFilter, decodeRow, prunedPosition, readRange } from '../db/outbox.ts';
import { type Claims, type ElectionOf, coverOf, matches, parseTopic } from '../events/topics.ts';
import { CloseCode, errorMessage } from '../errors.ts';
import type { Ring } from './ring.ts';
import type { Lease } from '../auth/limits.ts';

/** Per-socket state, kept in the uWebSockets.js user data. */
export type Session = {
  readonly id: number;
  readonly claims: Claims;
  readonly remote: string;
  /** Topics the client asked for (and may use). */
  readonly topics: Set<string>;
  /** uWS topics actually subscribed: a cover of `topics` in which no two nest. */
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

/** What the delivery code needs of a uWS socket. */
export type Sock = {
  send(message: string, isBinary?: boolean): number;
  getBufferedAmount(): number;
  subscribe(topic: string): boolean;
  unsubscribe(topic: string): boolean;
  end(code?: number, shortMessage?: string): void;
  getUserData(): Session;
};

export type Publisher = {
  publish(topic: string, message: string, isBinary?: boolean): boolean;
  numSubscribers(topic: string): number;
};

export type PositionSource = {
  position(): Position | undefined;
  waitFor(p: Position, timeoutMs: number): Promise<boolean>;
  /** True while the reader's latest attempt to read the outbox failed. */
  failing(): boolean;
};

/** The client's cursor is not one this hub can resume from (answered with `bad_cursor`). */
export class CursorError extends Error {}
/** The hub cannot serve this request now (answered with `unavailable`). */
export class UnavailableError extends Error {}

type Part = { topics: Set<string>; from: Position };

const PAGE = 1000;

export function createDelivery(opts: {
  publisher: Publisher;
  reader: PositionSource;
  pool: pg.Pool;
  ring: Ring;
  electionOf: ElectionOf;
  maxBuffered: number;
  metrics: Pick<Metrics, 'messagesSent' | 'events' | 'deliveryLag' | 'slowReaderCloses'>;
  log: Logger;
}) {
  const { publisher, reader, ring, metrics } = opts;
  let pruned: Position = { txid: 0n, id: 0n };
  // Set by every publish; the sweep only walks the sockets when something was sent since.
  let sentSinceSweep = false;

  /**
   * A replay that cannot be completed (a failed read, a hub not reading yet) must not go
   * live: the socket would miss what the replay did not send, silently and for good. It is
   * closed with 4009 instead and the client resumes from its last cursor on a new connection.
   * The socket is paused (subscribed to nothing) while replaying, so nothing after the gap
   * has reached it.
   */
  const resumeFailed = (ws: Sock, err: unknown) => {
    const s = ws.getUserData();
    if (s.closed) return;
    opts.log.warn({ sub: s.claims.sub, err: errorMessage(err) }, 'resume failed: closing with 4009');
    s.closed = true; // no further sends; the close handler finishes the bookkeeping
    ws.end(CloseCode.resumeFailed, 'resume failed: reconnect and resume');
  };

  const tooSlow = (ws: Sock) => {
    const s = ws.getUserData();
    if (s.closed) return;
    metrics.slowReaderCloses.inc();
    opts.log.info({ sub: s.claims.sub, buffered: ws.getBufferedAmount() }, 'closing slow reader (4008)');
    s.closed = true; // no further sends; the close handler finishes the bookkeeping
    ws.end(CloseCode.tooSlow, 'too slow: resume with your last cursor');
  };

  /** Sends one frame to one socket (replies, replays); false once the socket is gone. */
  const send = (ws: Sock, frame: string, type: string): boolean => {
    if (ws.getUserData().closed) return false;
    ws.send(frame, false);
    metrics.messagesSent.inc({ type });
    if (ws.getBufferedAmount() > opts.maxBuffered) {
      tooSlow(ws);
      return false;
    }
    return true;
  };

  /** Replays wait for the socket to drain instead of closing it for a burst they caused. */
  const drain = async (ws: Sock): Promise<boolean> => {
    const s = ws.getUserData();
    if (s.closed || ws.getBufferedAmount() < opts.maxBuffered / 2) return !s.closed;
    // Wait for uWS's drain callback (it fires as the buffer shrinks), up to 10 s.
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      s.drained = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
    s.drained = undefined;
    if (!ok) tooSlow(ws);
    return ok && !s.closed;
  };

  const applyCover = (ws: Sock) => {
    const s = ws.getUserData();
    if (s.closed) return;
    const next = coverOf(s.topics, opts.electionOf);
    for (const t of s.cover) if (!next.has(t)) ws.unsubscribe(t);
    for (const t of next) if (!s.cover.has(t)) ws.subscribe(t);
    s.cover = next;
  };

  const pause = (ws: Sock) => {
    const s = ws.getUserData();
    if (s.closed) return;
    for (const t of s.cover) ws.unsubscribe(t);
    s.cover = new Set();
  };

  const filterOf = (parts: Part[]): TopicFilter => {
    const f: TopicFilter = { all: false, elections: [], committees: [], topics: [] };
    for (const part of parts) {
      for (const t of part.topics) {
        const p = parseTopic(t);
        if (!p) continue;
        if (p.kind === 'all') f.all = true;
        else if (p.kind === 'election') f.elections.push(p.id);
        else if (p.kind === 'committee') f.committees.push(p.id);
        else f.topics.push(t);
      }
    }
    return f;
  };

  const wanted = (e: HubEvent, parts: Part[]) => parts.some((p) => compare(e.pos, p.from) > 0 && matches(e.topics, p.topics));

  /**
   * Replays `parts` (each: topics and the position after which the socket lacks their
   * events) in global order, then subscribes the socket. Pages come from PostgreSQL until
   * the ring covers the rest; the ring's tail is sent and the socket subscribed in one
   * synchronous step, so no live event falls between replay and subscription.
   */
  const catchUp = async (ws: Sock, parts: Part[], onLive: (cursor: Position, resync: boolean) => void): Promise<Position | undefined> => {
    for (;;) {
      const s = ws.getUserData();
      if (s.closed) return undefined;
      const lo = parts.reduce((m, p) => (compare(p.from, m) < 0 ? p.from : m), parts[0]?.from ?? { txid: 0n, id: 0n });
      const head = reader.position();
      if (!head) throw new UnavailableError('the hub is not reading the outbox yet');
      if (ring.covers(lo)) {
        // From memory. The socket is not subscribed yet, so pausing for backpressure loses
        // nothing; only the final stretch (tail + subscribe) must be one synchronous step.
        let paused: Position | undefined;
        for (const e of ring.after(lo)) {
          if (!wanted(e, parts)) continue;
          if (!send(ws, e.frame, e.type)) return undefined;
          if (ws.getBufferedAmount() >= opts.maxBuffered / 2) {
            paused = e.pos;
            break;
          }
        }
        if (paused === undefined) {
          applyCover(ws);
          onLive(head, false);
          return head;
        }
        for (const p of parts) if (compare(p.from, paused) < 0) p.from = paused;
        if (!(await drain(ws))) return undefined;
        continue;
      }
      const rows = await readRange(opts.pool, lo, head, filterOf(parts), PAGE);
      // Any node may have pruned meanwhile (it records how far atomically with the delete):
      // read the mark after the page, and if it passed where this replay stands, the page
      // may be incomplete: the client must take a fresh snapshot instead.
      const mark = await prunedPosition(opts.pool);
      if (compare(mark, pruned) > 0) pruned = mark;
      if (parts.some((p) => compare(p.from, mark) < 0)) {
        if (ws.getUserData().closed) return undefined;
        applyCover(ws);
        onLive(head, true);
        return head;
      }
      let last: Position | undefined;
      for (const raw of rows) {
        const e = decodeRow(raw);
        if (!e) continue;
        last = e.pos;
        if (wanted(e, parts)) {
          if (!send(ws, e.frame, e.type)) return undefined;
          if (!(await drain(ws))) return undefined;
        }
      }
      const reached = rows.length < PAGE ? head : (last ?? head);
      for (const p of parts) if (compare(p.from, reached) < 0) p.from = reached;
    }
  };

  return {
    /** Live fan-out: each event serialized once, published on its topics by uWS. */
    publish(events: HubEvent[]) {
      sentSinceSweep = true;
      const now = Date.now();
      for (const e of events) {
        let receivers = 0;
        for (const t of e.topics) {
          receivers += publisher.numSubscribers(t);
          publisher.publish(t, e.frame, false);
        }
        ring.push(e);
        metrics.events.inc({ kind: e.kind, action: e.action });
        if (receivers > 0) metrics.messagesSent.inc({ type: e.type }, receivers);
        metrics.deliveryLag.observe(Math.max(0, now - e.committedAtMs) / 1000);
      }
    },

    /** A frame that is not an outbox event (dashboard updates): live subscribers only. */
    publishFrame(topics: readonly string[], frame: string, type: string) {
      sentSinceSweep = true;
      let receivers = 0;
      for (const t of topics) {
        receivers += publisher.numSubscribers(t);
        publisher.publish(t, frame, false);
      }
      if (receivers > 0) metrics.messagesSent.inc({ type }, receivers);
    },

    send,
    applyCover,
    resumeFailed,

    setPruned(p: Position) {
      pruned = p;
    },

    /**
     * Adds topics to a socket. Without `since` they are live from now. With `since`,
     * events after it are replayed first, in order, together with whatever the socket's
     * other topics receive meanwhile (they are paused, and resumed from where they were).
     * A replay that cannot be completed closes the socket with 4009 (see `resumeFailed`);
     * it never goes live over a gap. Throws CursorError for a cursor this hub cannot know.
     */
    async subscribe(
      ws: Sock,
      topics: string[],
      since: Position | undefined,
      /** Called synchronously as the socket goes live: the `subscribed` frame marks the seam. */
      onLive: (cursor: Position, resync: boolean) => void,
    ): Promise<void> {
      const s = ws.getUserData();
      const head = reader.position();
      if (!head) {
        if (since !== undefined) return resumeFailed(ws, new UnavailableError('the hub is not reading the outbox yet'));
        throw new UnavailableError('the hub is not reading the outbox yet');
      }
      if (since === undefined || compare(since, pruned) < 0) {
        for (const t of topics) s.topics.add(t);
        applyCover(ws);
        onLive(head, since !== undefined);
        return;
      }
      if (compare(since, head) > 0 && !(await reader.waitFor(since, 3000))) {
        // Only a reader that reads and still does not reach it makes the cursor foreign.
        if (reader.failing()) return resumeFailed(ws, new UnavailableError('the outbox reader is failing'));
        throw new CursorError('cursor is ahead of the outbox: not one this hub issued');
      }
      if (s.closed) return;
      const p0 = reader.position() ?? head;
      const others = new Set([...s.topics].filter((t) => !topics.includes(t)));
      pause(ws);
      for (const t of topics) s.topics.add(t);
      const parts: Part[] = [{ topics: new Set(topics), from: since }];
      if (others.size > 0) parts.push({ topics: others, from: p0 });
      try {
        await catchUp(ws, parts, onLive);
      } catch (err) {
        // Not back to live delivery: the events this replay did not send would be lost.
        resumeFailed(ws, err);
      }
    },

    unsubscribe(ws: Sock, topics: string[]) {
      const s = ws.getUserData();
      for (const t of topics) s.topics.delete(t);
      applyCover(ws);
    },

    /** Called from the uWS drain handler. */
    drained(ws: Sock) {
      ws.getUserData().drained?.();
    },

    /**
     * Periodic: a socket whose buffer passed the limit is closed with 4008, never skipped.
     * Buffers only grow when something is sent, so an idle hub does not walk its sockets;
     * a socket still over the limit keeps the sweep armed until it drains or is closed.
     */
    sweep(sockets: Iterable<Sock>) {
      if (!sentSinceSweep) return;
      sentSinceSweep = false;
      for (const ws of sockets) {
        if (ws.getUserData().closed) continue;
        const buffered = ws.getBufferedAmount();
        if (buffered > opts.maxBuffered) tooSlow(ws);
        else if (buffered > 0) sentSinceSweep = true;
      }
    },
  };
}

export type Delivery = ReturnType<typeof createDelivery>;
