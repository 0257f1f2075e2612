import type { Logger } from '../log.ts';
import type { Metrics, SlowCloseCause } from '../metrics/index.ts';
import { FIRST_SEQ, type LostRange, type Position, ZERO, compare, lostRangeOf } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import type { History, TopicFilter } from '../events/history.ts';
import {
  type Claims,
  type ElectionOf,
  type Id,
  UNKNOWN,
  committeeCover,
  committeeIn,
  coverOf,
  parseTopic,
  receives,
} from '../events/topics.ts';
import { CloseCode, errorMessage } from '../errors.ts';
import { type Ring, frameBytes } from './ring.ts';
import {
  type Session,
  addCover,
  addTopics,
  markClosed,
  onDrained,
  removeCover,
  removeTopics,
  setCover,
} from './session.ts';

/** What the delivery code needs of a uWS socket. */
export type Sock = {
  send(message: string, isBinary?: boolean, compress?: boolean): number;
  getBufferedAmount(): number;
  subscribe(topic: string): boolean;
  unsubscribe(topic: string): boolean;
  end(code?: number, shortMessage?: string): void;
  getUserData(): Session;
};

export type Publisher = {
  publish(topic: string, message: string, isBinary?: boolean, compress?: boolean): boolean;
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

/**
 * uWS's App.publish sends a message of at least this size (its cork buffer) to every
 * subscriber at once, so buffers grow during the call; smaller ones are queued once in the
 * topic tree and copied to the subscribers when the event loop turns (uWS src/App.h, publish).
 */
const DIRECT_SEND_BYTES = 16 * 1024;

export function createDelivery(opts: {
  publisher: Publisher;
  reader: PositionSource;
  /** Replay storage: pages of the outbox older than the ring holds, and how far pruning reached. */
  history: History;
  ring: Ring;
  /** Cached committee → election (a hint for a committee's first socket; rows correct it). */
  electionOf: ElectionOf;
  /** The open sockets (walked by the buffer checks, never per event). */
  sockets: ReadonlySet<Sock>;
  /** MAX_BACKPRESSURE_BYTES: one socket's buffer limit. */
  maxBuffered: number;
  /** MAX_TOTAL_BUFFERED_BYTES: all sockets' buffers together. */
  maxTotalBuffered: number;
  /**
   * WS_COMPRESSION_MIN_BYTES: frames of at least this many bytes are sent with uWS's compress
   * flag, which deflates them for each socket that negotiated permessage-deflate (once per
   * receiving socket: the cost is per delivery); smaller ones, and every frame to the other
   * sockets, go as they are. Default 0: all.
   */
  compressMinBytes?: number;
  metrics: Pick<
    Metrics,
    | 'messagesSent'
    | 'bytesSent'
    | 'events'
    | 'deliveryLag'
    | 'slowReaderCloses'
    | 'replayBufferBytes'
    | 'replayBufferEvents'
    | 'bufferedBytes'
  >;
  log: Logger;
}) {
  const { publisher, reader, ring, metrics, sockets } = opts;
  const compressMin = opts.compressMinBytes ?? 0;
  let pruned: Position = ZERO;
  // Keys PostgreSQL's restarts took back (sql/012_async_keys_and_restarts.sql): a `since` in
  // one counts events that no longer exist under their keys, and is answered like a pruned one.
  let lost: readonly LostRange[] = [];
  // Set by every publish; the sweep only walks the sockets when something was sent since.
  let sentSinceSweep = false;
  // Published since the last buffer check: frame bytes (what one socket can have gained) and
  // frame bytes times receivers (what all of them can have gained together).
  let framesSinceCheck = 0;
  let fannedSinceCheck = 0;

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
    markClosed(s); // no further sends; the close handler finishes the bookkeeping
    ws.end(CloseCode.resumeFailed, 'resume failed: reconnect and resume');
  };

  const tooSlow = (ws: Sock, cause: SlowCloseCause) => {
    const s = ws.getUserData();
    if (s.closed) return;
    metrics.slowReaderCloses.inc({ cause });
    opts.log.info({ sub: s.claims.sub, buffered: ws.getBufferedAmount(), cause }, 'closing slow reader (4008)');
    markClosed(s); // no further sends; the close handler finishes the bookkeeping
    ws.end(CloseCode.tooSlow, 'too slow: resume with your last cursor');
  };

  /** Frame type as a metric label: an application event's type is the application's own text. */
  const typeLabel = (type: string, app: boolean) => (app ? 'app_event' : type);

  /**
   * One walk over the sockets: any socket over its own limit is closed with 4008; then, while
   * all buffers together pass the global budget, the most buffered sockets are closed first
   * (a client closed with 4008 resumes from its cursor: nothing is skipped). Returns what stays
   * buffered. A closed socket's buffer is freed by uWS once flushed, or at its close timeout.
   */
  const check = (): number => {
    framesSinceCheck = 0;
    fannedSinceCheck = 0;
    let total = 0;
    const buffered: Array<{ ws: Sock; bytes: number }> = [];
    for (const ws of sockets) {
      if (ws.getUserData().closed) continue;
      const bytes = ws.getBufferedAmount();
      if (bytes === 0) continue;
      if (bytes > opts.maxBuffered) {
        tooSlow(ws, 'socket_limit');
        continue;
      }
      total += bytes;
      buffered.push({ ws, bytes });
    }
    if (total > opts.maxTotalBuffered) {
      buffered.sort((a, b) => b.bytes - a.bytes);
      for (const b of buffered) {
        if (total <= opts.maxTotalBuffered) break;
        tooSlow(b.ws, 'global_budget');
        total -= b.bytes;
      }
    }
    metrics.bufferedBytes.set(total);
    return total;
  };

  /**
   * Whether enough was published since the last check for a socket to have passed its limit,
   * or all of them the global budget. The second bound grows with the number of sockets, so a
   * walk costs a fixed fraction of the fan-out it follows, however many sockets there are.
   */
  const dueForCheck = () =>
    framesSinceCheck >= opts.maxBuffered ||
    fannedSinceCheck >= Math.max(opts.maxTotalBuffered / 16, sockets.size * 4096);

  /**
   * Counts `receivers` deliveries of one frame of `bytes` (computed once per frame), and
   * checks the buffers once enough went out since the last check.
   */
  const sent = (type: string, bytes: number, receivers: number) => {
    metrics.messagesSent.inc({ type }, receivers);
    metrics.bytesSent.inc({ type }, bytes * receivers);
    framesSinceCheck += bytes;
    fannedSinceCheck += bytes * receivers;
    if (bytes >= DIRECT_SEND_BYTES && dueForCheck()) check();
  };

  /** Sends one frame to one socket (replies, replays); false once the socket is gone. */
  const send = (ws: Sock, frame: string, type: string, app = false): boolean => {
    if (ws.getUserData().closed) return false;
    const bytes = frameBytes(frame);
    ws.send(frame, false, bytes >= compressMin);
    const label = typeLabel(type, app);
    metrics.messagesSent.inc({ type: label });
    metrics.bytesSent.inc({ type: label }, bytes);
    if (ws.getBufferedAmount() > opts.maxBuffered) {
      tooSlow(ws, 'socket_limit');
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
      onDrained(s, () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    onDrained(s, undefined);
    if (!ok) tooSlow(ws, 'socket_limit');
    return ok && !s.closed;
  };

  /*
   * Committees that live sockets requested: the election key ('' none, UNKNOWN before any
   * row) their rows come from on this node, following the published rows in order, and the
   * live sockets that requested them (paused and closed sockets are not in it). Its size is
   * bounded by the live sockets' topics.
   */
  const followed = new Map<Id, { at: string; sockets: Set<Sock> }>();
  const following = new WeakMap<Session, Set<Id>>();

  const follow = (ws: Sock, id: Id) => {
    let f = followed.get(id);
    if (!f) {
      const e = opts.electionOf(id);
      followed.set(id, (f = { at: e === undefined || e === null ? UNKNOWN : e, sockets: new Set() }));
    }
    f.sockets.add(ws);
  };
  const unfollow = (ws: Sock, id: Id) => {
    const f = followed.get(id);
    if (!f) return;
    f.sockets.delete(ws);
    if (f.sockets.size === 0) followed.delete(id);
  };
  const unfollowAll = (ws: Sock) => {
    const s = ws.getUserData();
    for (const id of following.get(s) ?? []) unfollow(ws, id);
    following.delete(s);
  };

  const applyCover = (ws: Sock) => {
    const s = ws.getUserData();
    if (s.closed) return;
    const want = new Set<Id>();
    for (const t of s.topics) {
      const p = parseTopic(t);
      if (p?.kind === 'committee') want.add(p.id);
    }
    const had = following.get(s) ?? new Set<Id>();
    for (const id of had) if (!want.has(id)) unfollow(ws, id);
    for (const id of want) if (!had.has(id)) follow(ws, id);
    following.set(s, want);
    const next = coverOf(s.claims, s.topics, (id) => followed.get(id)?.at ?? UNKNOWN);
    for (const t of s.cover) if (!next.has(t)) ws.unsubscribe(t);
    for (const t of next) if (!s.cover.has(t)) ws.subscribe(t);
    setCover(s, next);
  };

  const pause = (ws: Sock) => {
    const s = ws.getUserData();
    if (s.closed) return;
    for (const t of s.cover) ws.unsubscribe(t);
    setCover(s, new Set());
    unfollowAll(ws);
  };

  /**
   * Before a row of committee C from election key `at` is published: if C's rows came from
   * another election so far, move the sockets that requested C to where the rule lets them
   * receive it (synchronously, so the row itself already goes to the new set).
   */
  const retarget = (committee: Id, at: string) => {
    const f = followed.get(committee);
    if (!f || f.at === at) return;
    const old = committeeIn(f.at, committee);
    f.at = at;
    for (const ws of f.sockets) {
      const s = ws.getUserData();
      if (s.closed) continue;
      const next = committeeCover(s.claims, s.topics, committee, at);
      if (removeCover(s, old)) ws.unsubscribe(old);
      if (next !== undefined && !s.cover.has(next)) {
        ws.subscribe(next);
        addCover(s, next);
      }
    }
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
        else if (p.kind === 'user') f.topics.push(t); // dashboard:{id} carries no rows
      }
    }
    return f;
  };

  /** Replays follow the same rule as live delivery, with each row's own election. */
  const wanted = (claims: Claims, e: OutboxEvent, parts: Part[]) =>
    parts.some((p) => compare(e.pos, p.from) > 0 && receives(claims, p.topics, e));

  /**
   * Replays `parts` (each: topics and the position after which the socket lacks their
   * events) in global order, then subscribes the socket. Pages come from PostgreSQL until
   * the ring covers the rest; the ring's tail is sent and the socket subscribed in one
   * synchronous step, so no live event falls between replay and subscription.
   */
  const catchUp = async (
    ws: Sock,
    parts: Part[],
    onLive: (cursor: Position, resync: boolean) => void,
  ): Promise<Position | undefined> => {
    for (;;) {
      const s = ws.getUserData();
      if (s.closed) return undefined;
      const lo = parts.reduce((m, p) => (compare(p.from, m) < 0 ? p.from : m), parts[0]?.from ?? ZERO);
      const head = reader.position();
      if (!head) throw new UnavailableError('the hub is not reading the outbox yet');
      if (ring.covers(lo)) {
        // From memory. The socket is not subscribed yet, so pausing for backpressure loses
        // nothing; only the final stretch (tail + subscribe) must be one synchronous step.
        let paused: Position | undefined;
        for (const e of ring.after(lo)) {
          if (!wanted(s.claims, e, parts)) continue;
          if (!send(ws, e.frame, e.type, e.kind === 'app')) return undefined;
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
      const rows = await opts.history.page(lo, head, filterOf(parts), PAGE);
      // Any node may have pruned meanwhile (it records how far atomically with the delete):
      // read the mark after the page, and if it passed where this replay stands, the page
      // may be incomplete: the client must take a fresh snapshot instead.
      const mark = await opts.history.prunedMark();
      if (compare(mark, pruned) > 0) pruned = mark;
      if (parts.some((p) => compare(p.from, mark) < 0)) {
        if (ws.getUserData().closed) return undefined;
        applyCover(ws);
        onLive(head, true);
        return head;
      }
      // The replay advances row by row, decodable or not: a page of malformed rows must not
      // make it jump to the head past the good rows that follow them.
      let last: Position | undefined;
      for (const row of rows) {
        last = row.pos ?? last;
        const e = row.event;
        if (!e) continue;
        if (wanted(s.claims, e, parts)) {
          if (!send(ws, e.frame, e.type, e.kind === 'app')) return undefined;
          if (!(await drain(ws))) return undefined;
        }
      }
      if (rows.length >= PAGE && last === undefined) throw new Error('outbox page without row positions');
      const reached = rows.length < PAGE || last === undefined ? head : last;
      for (const p of parts) if (compare(p.from, reached) < 0) p.from = reached;
    }
  };

  return {
    /**
     * Live fan-out: each event serialized once, published on its topics by uWS. The buffer
     * limits are checked while a batch goes out, not only by the periodic sweep: before it
     * (what earlier small frames left in the buffers) and after any large frame once enough
     * was published since the last check.
     */
    publish(events: OutboxEvent[]) {
      sentSinceSweep = true;
      if (dueForCheck()) check();
      const now = Date.now();
      for (const e of events) {
        if (e.committeeId !== null && !(e.topic?.startsWith('user:') ?? false))
          retarget(e.committeeId, e.electionId ?? '');
        const bytes = frameBytes(e.frame);
        let receivers = 0;
        for (const t of e.topics) {
          receivers += publisher.numSubscribers(t);
          publisher.publish(t, e.frame, false, bytes >= compressMin);
        }
        ring.push(e, bytes);
        metrics.events.inc({ kind: e.kind, action: e.action });
        if (receivers > 0) sent(typeLabel(e.type, e.kind === 'app'), bytes, receivers);
        metrics.deliveryLag.observe(Math.max(0, now - e.committedAtMs) / 1000);
      }
      const held = ring.size();
      metrics.replayBufferBytes.set(held.bytes);
      metrics.replayBufferEvents.set(held.events);
    },

    /** A frame that is not an outbox event (dashboard updates): live subscribers only. */
    publishFrame(topics: readonly string[], frame: string, type: string) {
      sentSinceSweep = true;
      if (dueForCheck()) check();
      const bytes = frameBytes(frame);
      let receivers = 0;
      for (const t of topics) {
        receivers += publisher.numSubscribers(t);
        publisher.publish(t, frame, false, bytes >= compressMin);
      }
      if (receivers > 0) sent(type, bytes, receivers);
    },

    send,
    applyCover,
    resumeFailed,

    setPruned(p: Position) {
      pruned = p;
    },

    setLost(l: readonly LostRange[]) {
      lost = l;
    },

    /**
     * The reader's position was in keys a restart of PostgreSQL took back, and it now stands at
     * `p`: the replay buffer is emptied and every socket closed with 4009 (what they received
     * from those keys no longer exists under them; a client resumes with its last cursor and is
     * answered `resync`). One walk, at a restart only.
     */
    restart(p: Position) {
      ring.reset(p);
      let n = 0;
      for (const ws of sockets) {
        const s = ws.getUserData();
        if (s.closed) continue;
        markClosed(s);
        ws.end(CloseCode.resumeFailed, 'the database restarted: reconnect and resume');
        n++;
      }
      opts.log.warn({ sockets: n }, 'keys lost in a restart of PostgreSQL: closed every socket with 4009');
      const held = ring.size();
      metrics.replayBufferBytes.set(held.bytes);
      metrics.replayBufferEvents.set(held.events);
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
      // Live at once; with `resync` the client takes a fresh snapshot instead of a replay.
      const goLive = (resync: boolean) => {
        addTopics(s, topics);
        applyCover(ws);
        onLive(reader.position() ?? head, resync);
      };
      let stale = since !== undefined && compare(since, pruned) < 0;
      if (since !== undefined && !stale && since.seq < FIRST_SEQ) {
        // A cursor of the order before commit keys (sql/006_commit_order.sql): exact up to the
        // migration; one issued after it by a hub of the previous version cannot be placed.
        try {
          stale = !(await opts.history.legacyCursorKnown(since));
        } catch (err) {
          return resumeFailed(ws, err);
        }
        if (s.closed) return;
      }
      if (since === undefined || stale) return goLive(since !== undefined);
      if (compare(since, head) > 0 && !(await reader.waitFor(since, 3000))) {
        // Only a reader that reads and still does not reach it makes the cursor foreign.
        if (reader.failing()) return resumeFailed(ws, new UnavailableError('the outbox reader is failing'));
        throw new CursorError('cursor is ahead of the outbox: not one this hub issued');
      }
      if (s.closed) return;
      // Checked after the wait: a cursor ahead of this node's reader may be in a range it learns
      // of only when it reaches the new epoch.
      if (lostRangeOf(since, lost)) return goLive(true);
      const p0 = reader.position() ?? head;
      const others = new Set([...s.topics].filter((t) => !topics.includes(t)));
      pause(ws);
      addTopics(s, topics);
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
      removeTopics(s, topics);
      applyCover(ws);
    },

    /** Called from the uWS close handler: the socket leaves the committee index. */
    closed(ws: Sock) {
      unfollowAll(ws);
    },

    /** Called from the uWS drain handler. */
    drained(ws: Sock) {
      ws.getUserData().drained?.();
    },

    /**
     * Periodic: sockets over their limit or the global budget are closed with 4008, never
     * skipped. Buffers only grow when something is sent, so an idle hub does not walk its
     * sockets; a socket still buffering keeps the sweep armed until it drains or is closed.
     */
    sweep() {
      if (!sentSinceSweep) return;
      sentSinceSweep = false;
      if (check() > 0) sentSinceSweep = true;
    },

    /** Memory figures for /admin/health: the ring's contents and what sockets buffer now. */
    memory() {
      let buffered = 0;
      for (const ws of sockets) if (!ws.getUserData().closed) buffered += ws.getBufferedAmount();
      return { ring: ring.size(), buffered };
    },
  };
}

export type Delivery = ReturnType<typeof createDelivery>;
