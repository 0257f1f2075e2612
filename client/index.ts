/**
 * election-hub client SDK: a typed, resuming WebSocket client for browsers and Node.
 *
 * - Built on the standard WebSocket API (inject `ws` in Node 20, which has no global WebSocket).
 * - Authenticates with the subprotocol `bearer.<jwt>`, so tokens never appear in URLs, proxy
 *   access logs or browser history. `token` may be a function: it is called before every
 *   connection attempt (return a cached token while it is still valid).
 * - Resumes after every disconnect: each reconnect uses `?subscribe=none` and sends
 *   `subscribe {topics, since: <last cursor>}`, so the application sees every event once, in
 *   cursor order (events at or before the last cursor are dropped at the seams). Without
 *   `since`, the client starts at the hub's position when it first connected.
 * - A resume that fails is retried, never skipped: close 4009 (the hub could not complete the
 *   replay) and any `error` answer to a `subscribe` with `since` (except `bad_cursor`, see
 *   below) make the client drop that connection and reconnect, with backoff, from its last
 *   cursor; nothing that socket sends after the error is delivered.
 * - State `open` means `connection_success` arrived (the resume replay may still be running).
 * - Jittered exponential backoff, heartbeat (`ping` every 20 s; a connection that stays silent
 *   for 10 s after a ping is treated as dead), and `close()` that leaves no timers behind.
 *
 * Only types are imported from the protocol schemas: the bundle does not contain zod. Pass
 * `validate: (f) => ServerFrame.parse(f)` to validate frames at runtime if you want to.
 */
import type { z } from 'zod';
import type {
  AppEvent,
  ConnectionSuccess as ConnectionSuccessSchema,
  DashboardSnapshot,
  DashboardUpdate,
  ErrorFrame as ErrorFrameSchema,
  Pong as PongSchema,
  Resync as ResyncSchema,
  RowEvent,
  Subscribed as SubscribedSchema,
  Unsubscribed as UnsubscribedSchema,
} from '../src/events/schema.ts';

export type { AppEvent, DashboardSnapshot, DashboardUpdate, RowEvent };
export type ConnectionSuccess = z.infer<typeof ConnectionSuccessSchema>;
export type Subscribed = z.infer<typeof SubscribedSchema>;
export type Unsubscribed = z.infer<typeof UnsubscribedSchema>;
export type Resync = z.infer<typeof ResyncSchema>;
export type Pong = z.infer<typeof PongSchema>;
export type ErrorFrame = z.infer<typeof ErrorFrameSchema>;

/** An event that carries a cursor: a captured row change or an application event. */
export type HubEvent = RowEvent | AppEvent;

/** Server frames by `type`. Any other type is an application event (`AppEvent`). */
export type FrameMap = {
  connection_success: ConnectionSuccess;
  subscribed: Subscribed;
  unsubscribed: Unsubscribed;
  resync: Resync;
  pong: Pong;
  error: ErrorFrame;
  dashboard_update: DashboardUpdate;
  guarantee_update: RowEvent & { type: 'guarantee_update' };
  attendance_update: RowEvent & { type: 'attendance_update' };
  voting_update: RowEvent & { type: 'voting_update' };
};

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why the state changed (the close that caused a reconnect, a transport error). */
export type StateDetail = { code?: number; reason?: string; error?: unknown; retryInMs?: number };

/** The part of the standard WebSocket API the client uses (`globalThis.WebSocket` and `ws` both fit). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'open', listener: (ev: unknown) => void): void;
  addEventListener(type: 'message', listener: (ev: { data: unknown }) => void): void;
  addEventListener(type: 'close', listener: (ev: { code: number; reason: string }) => void): void;
  addEventListener(type: 'error', listener: (ev: unknown) => void): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

type Source = string | (() => string | Promise<string>);

export type HubClientOptions = {
  /** `ws(s)://host/ws`, or a function called before every connection attempt. */
  url: Source;
  /** The JWT, or a function called before every connection attempt (e.g. to refresh it). */
  token: Source;
  /**
   * Topics to subscribe. Omitted: the server subscribes what the token's claims name, and
   * the client records them from `connection_success` for later resumes.
   */
  topics?: string[];
  /** Start after this cursor (replaying everything since) instead of from now. */
  since?: string;
  /** WebSocket implementation; default `globalThis.WebSocket` (in Node 20: `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  /**
   * Reconnect delay: full jitter in [0, min(maxMs, initialMs * 2^attempt)]. Default 250 ms → 10 s.
   * The attempt count starts over once a connection has stayed open for 2 s.
   */
  backoff?: { initialMs?: number; maxMs?: number };
  /** `ping` every `intervalMs` (20 s); no frame within `timeoutMs` (10 s) after it = dead connection. */
  heartbeat?: { intervalMs?: number; timeoutMs?: number };
  /** A connection attempt that has not received `connection_success` by then is abandoned. Default 10 s. */
  connectTimeoutMs?: number;
  /** Optional runtime validation of every parsed frame (e.g. `ServerFrame.parse`); throw to drop it. */
  validate?: (frame: unknown) => unknown;
};

type Unsubscribe = () => void;

export type HubClient = {
  /** Frames of one type; for event types only events past the client's cursor (deduplicated). */
  on<K extends keyof FrameMap>(type: K, handler: (frame: FrameMap[K]) => void): Unsubscribe;
  on(type: string, handler: (frame: AppEvent) => void): Unsubscribe;
  /** Every row and application event, once each, in cursor order. */
  onEvent(handler: (event: HubEvent) => void): Unsubscribe;
  onState(handler: (state: ClientState, detail: StateDetail) => void): Unsubscribe;
  state(): ClientState;
  /** The cursor of the last event delivered (or the position the server confirmed); the resume point. */
  cursor(): string | undefined;
  /** The topics the client keeps subscribed (and resubscribes after every reconnect). */
  topics(): string[];
  /**
   * Adds topics. Without `since` they are live from now; with `since` the server replays
   * from there, but the client keeps one strictly increasing event sequence, so events at or
   * before `cursor()` are not delivered again (for full history, create a client with `since`).
   */
  subscribe(topics: string[], since?: string): void;
  unsubscribe(topics: string[]): void;
  /** Stops reconnecting, closes the socket and clears every timer; resolves once closed. */
  close(): Promise<void>;
};

/** A connection that stayed open this long resets the backoff. */
const STABLE_MS = 2000;
const CONTROL = new Set([
  'connection_success',
  'subscribed',
  'unsubscribed',
  'resync',
  'pong',
  'error',
  'dashboard_update',
]);
const CURSOR = /^([0-9a-z]{1,13})\.([0-9a-z]{1,13})$/;

const compareDigits = (a: string, b: string): number => {
  const x = a.replace(/^0+(?=.)/, '');
  const y = b.replace(/^0+(?=.)/, '');
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  // Same length, digits 0-9 then a-z: ASCII order is numeric order in base 36.
  return x === y ? 0 : x < y ? -1 : 1;
};

/**
 * Orders two hub cursors (`<txid base36>.<id base36>`) as the (txid, id) pair: negative,
 * zero or positive like a sort comparator. Exact for every cursor the hub issues (64-bit txid and
 * id), without floating point or BigInt.
 * Throws a TypeError for a string that is not a cursor.
 */
export function compareCursors(a: string, b: string): -1 | 0 | 1 {
  const ma = CURSOR.exec(a.toLowerCase());
  const mb = CURSOR.exec(b.toLowerCase());
  if (!ma || !mb) throw new TypeError(`not a hub cursor: ${JSON.stringify(ma ? b : a)}`);
  const c = compareDigits(ma[1] ?? '', mb[1] ?? '') || compareDigits(ma[2] ?? '', mb[2] ?? '');
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

const resolve = async (s: Source): Promise<string> => (typeof s === 'function' ? await s() : s);

/** Calls a listener; an exception is reported asynchronously (like EventTarget) and does not stop dispatch. */
const safely = <A extends unknown[]>(fn: (...args: A) => void, ...args: A) => {
  try {
    fn(...args);
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
};

/**
 * Creates a client and starts connecting. See the module comment for the resume rules.
 *
 * ```ts
 * const client = createHubClient({ url: 'wss://hub.example/ws', token: getToken, topics: ['election:1'] });
 * client.onEvent((e) => console.log(e.type, e.cursor));
 * ```
 */
export function createHubClient(opts: HubClientOptions): HubClient {
  const Impl = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!Impl)
    throw new TypeError('no WebSocket implementation: pass opts.WebSocket (in Node 20: `import WebSocket from "ws"`)');
  const initialMs = opts.backoff?.initialMs ?? 250;
  const maxMs = opts.backoff?.maxMs ?? 10_000;
  const pingEvery = opts.heartbeat?.intervalMs ?? 20_000;
  const pongWithin = opts.heartbeat?.timeoutMs ?? 10_000;
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  if (opts.since !== undefined && !CURSOR.test(opts.since))
    throw new TypeError(`not a hub cursor: ${JSON.stringify(opts.since)}`);
  if (typeof opts.url === 'string') new URL(opts.url); // throws a TypeError for a malformed URL now, not on every retry

  let state: ClientState = 'connecting';
  let lastCursor: string | undefined = opts.since;
  const topics = new Set<string>(opts.topics ?? []);
  /** Until the server told us (auto-subscribe), the first connection lets it pick the topics. */
  let topicsKnown = opts.topics !== undefined;
  let closing = false;
  let attempt = 0;
  let sock: WebSocketLike | undefined;
  /** When the current connection received `connection_success` (0: not yet). */
  let openedAt = 0;
  /** Drop events until `unsubscribed` (re-subscribing auto-subscribed topics with `since`). */
  let discardUntilUnsubscribed = false;
  /** Topics unsubscribed before the server named the auto-subscribed ones. */
  const droppedEarly = new Set<string>();
  /**
   * The `subscribe` frames sent on this connection and not yet answered by `subscribed`, in
   * order (true: with `since`). The hub answers them one at a time, in order.
   */
  let unanswered: boolean[] = [];

  let reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  let connectTimer: ReturnType<typeof setTimeout> | undefined;
  let pingTimer: ReturnType<typeof setInterval> | undefined;
  let deadTimer: ReturnType<typeof setTimeout> | undefined;
  let closed: Promise<void> | undefined;
  let closedResolve: (() => void) | undefined;

  const typed = new Map<string, Set<(f: never) => void>>();
  const eventHandlers = new Set<(e: HubEvent) => void>();
  const stateHandlers = new Set<(s: ClientState, d: StateDetail) => void>();

  const setState = (next: ClientState, detail: StateDetail = {}) => {
    if (state === 'closed') return;
    if (state === next && next !== 'reconnecting') return;
    state = next;
    for (const h of [...stateHandlers]) safely(h, next, detail);
  };

  const emit = (type: string, frame: unknown) => {
    const hs = typed.get(type);
    if (hs) for (const h of [...hs]) safely(h as (f: unknown) => void, frame);
  };

  const send = (frame: Record<string, unknown>) => {
    if (sock && sock.readyState === 1) {
      sock.send(JSON.stringify(frame));
      if (frame.type === 'subscribe') unanswered.push(frame.since !== undefined);
    }
  };

  const clearConnectionTimers = () => {
    clearTimeout(connectTimer);
    clearInterval(pingTimer);
    clearTimeout(deadTimer);
    connectTimer = pingTimer = deadTimer = undefined;
  };

  /**
   * The backoff starts over only after a connection that worked for a while, so a connection
   * that is accepted and then dropped at once does not reconnect in a hot loop.
   */
  const settleBackoff = () => {
    if (openedAt > 0 && Date.now() - openedAt >= STABLE_MS) attempt = 0;
    openedAt = 0;
  };

  /** Forgets the current socket (its late events are ignored) and closes it. */
  const abandon = (code: number, reason: string) => {
    const s = sock;
    sock = undefined;
    clearConnectionTimers();
    settleBackoff();
    if (s && s.readyState < 2) {
      try {
        s.close(code, reason);
      } catch {
        // already closing
      }
    }
  };

  const scheduleReconnect = (detail: StateDetail, delayMs?: number) => {
    if (closing) return;
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
    const delay = delayMs ?? Math.round(Math.random() * cap);
    attempt++;
    setState('reconnecting', { ...detail, retryInMs: delay });
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      void connect();
    }, delay);
  };

  /** Sends the subscription for everything the client holds, resuming after its cursor. */
  const resume = () => {
    if (topics.size === 0) return;
    send({ type: 'subscribe', topics: [...topics], ...(lastCursor !== undefined ? { since: lastCursor } : {}) });
  };

  const advance = (cursor: string | undefined) => {
    if (!cursor || !CURSOR.test(cursor)) return;
    if (lastCursor === undefined || compareCursors(cursor, lastCursor) > 0) lastCursor = cursor;
  };

  const onFrame = (frame: { type: string; cursor?: unknown; [k: string]: unknown }) => {
    switch (frame.type) {
      case 'connection_success': {
        clearTimeout(connectTimer);
        connectTimer = undefined;
        openedAt = Date.now();
        const cs = frame as unknown as ConnectionSuccess;
        if (!topicsKnown) {
          topicsKnown = true;
          const extra = [...topics].filter((t) => !cs.topics.includes(t));
          const unwanted = cs.topics.filter((t) => droppedEarly.has(t));
          for (const t of cs.topics) if (!droppedEarly.has(t)) topics.add(t);
          droppedEarly.clear();
          if (lastCursor === undefined) {
            advance(cs.cursor);
            if (unwanted.length > 0) send({ type: 'unsubscribe', topics: unwanted });
            if (extra.length > 0) send({ type: 'subscribe', topics: extra });
          } else if (cs.topics.length > 0) {
            // Auto-subscribed live from now, but asked to start at `since`: take them off and
            // subscribe again with `since`, ignoring the live events in between.
            discardUntilUnsubscribed = true;
            send({ type: 'unsubscribe', topics: cs.topics });
            resume();
          } else {
            resume();
          }
        } else {
          // The first connection starts at the hub's position when it connected, so a connection
          // lost before its `subscribed` does not turn that moment into a gap.
          if (lastCursor === undefined) advance(cs.cursor);
          resume();
        }
        startHeartbeat();
        setState('open');
        break;
      }
      case 'subscribed':
        unanswered.shift();
        advance((frame as unknown as Subscribed).cursor);
        break;
      case 'unsubscribed':
        discardUntilUnsubscribed = false;
        break;
      case 'error': {
        const e = frame as unknown as ErrorFrame;
        const resuming = unanswered.includes(true);
        if (e.code === 'bad_cursor' && lastCursor !== undefined && topics.size > 0) {
          // A resume cursor this hub does not know (another database, a reset outbox): start over.
          unanswered.shift();
          lastCursor = undefined;
          emit('resync', { type: 'resync', topics: [...topics] } satisfies Resync);
          send({ type: 'subscribe', topics: [...topics] });
        } else if (resuming) {
          // Whatever the error (the hub failed, or answered a frame sent alongside), a resume
          // is pending: this connection may go live without the replay, so it is dropped
          // and the client resumes from its cursor on a new one. (An error that answered some
          // other frame costs one reconnect, never an event.)
          emit('error', frame);
          abandon(4000, 'resume failed');
          scheduleReconnect({ reason: `resume failed: ${e.code}` });
          return;
        }
        break;
      }
    }
    if (CONTROL.has(frame.type)) {
      emit(frame.type, frame);
      return;
    }
    if (typeof frame.cursor !== 'string' || discardUntilUnsubscribed) return;
    if (lastCursor !== undefined && CURSOR.test(frame.cursor) && compareCursors(frame.cursor, lastCursor) <= 0) return; // seen
    advance(frame.cursor);
    const event = frame as unknown as HubEvent;
    for (const h of [...eventHandlers]) safely(h, event);
    emit(frame.type, frame);
  };

  const startHeartbeat = () => {
    clearInterval(pingTimer);
    pingTimer = setInterval(() => {
      send({ type: 'ping' });
      if (deadTimer === undefined) {
        deadTimer = setTimeout(() => {
          deadTimer = undefined;
          abandon(4000, 'heartbeat timeout');
          scheduleReconnect({ reason: 'heartbeat timeout' });
        }, pongWithin);
      }
    }, pingEvery);
  };

  const connect = async () => {
    if (closing) return;
    let s: WebSocketLike;
    try {
      const [url, token] = await Promise.all([resolve(opts.url), resolve(opts.token)]);
      if (closing) return;
      const u = new URL(url);
      if (topicsKnown) u.searchParams.set('subscribe', 'none');
      s = new Impl(u.toString(), [`bearer.${token}`]);
    } catch (error) {
      // A token or URL callback that failed, or a URL/token the WebSocket constructor refused.
      scheduleReconnect({ error });
      return;
    }
    sock = s;
    openedAt = 0;
    discardUntilUnsubscribed = false;
    unanswered = [];
    connectTimer = setTimeout(() => {
      if (sock !== s) return;
      abandon(4000, 'connect timeout');
      scheduleReconnect({ reason: 'connect timeout' });
    }, connectTimeoutMs);

    let lastError: unknown;
    s.addEventListener('error', (ev) => {
      lastError = (ev as { error?: unknown; message?: unknown }).error ?? (ev as { message?: unknown }).message ?? ev;
    });
    s.addEventListener('message', (ev) => {
      if (sock !== s || closing || typeof ev.data !== 'string') return;
      clearTimeout(deadTimer);
      deadTimer = undefined;
      let frame: unknown;
      try {
        frame = JSON.parse(ev.data);
        if (opts.validate) frame = opts.validate(frame) ?? frame;
      } catch {
        return;
      }
      if (frame && typeof frame === 'object' && typeof (frame as { type?: unknown }).type === 'string') {
        onFrame(frame as { type: string });
      }
    });
    s.addEventListener('close', (ev) => {
      if (closing && (sock === s || sock === undefined)) {
        sock = undefined;
        clearConnectionTimers();
        closedResolve?.();
        return;
      }
      if (sock !== s) return; // abandoned: its replacement is already scheduled
      sock = undefined;
      clearConnectionTimers();
      settleBackoff();
      const detail: StateDetail = {
        code: ev.code,
        reason: ev.reason,
        ...(lastError !== undefined ? { error: lastError } : {}),
      };
      if (ev.code === 4001) {
        // Token expired: a token function is asked for a fresh one (at once the first time, then
        // with backoff, should it keep handing out stale tokens); a fixed token cannot recover.
        if (typeof opts.token === 'function') scheduleReconnect(detail, attempt === 0 ? 0 : undefined);
        else void shutdown(detail);
      } else if (ev.code === 4009) {
        // The hub could not complete the replay: reconnect (with backoff) and resume again.
        scheduleReconnect(detail);
      } else if (ev.code === 1008 || ev.code === 1009) {
        // The server thinks this client is misbehaving: never hot-loop.
        scheduleReconnect(detail, Math.round(maxMs / 2 + (Math.random() * maxMs) / 2));
      } else {
        scheduleReconnect(detail);
      }
    });
  };

  const shutdown = (detail: StateDetail = {}): Promise<void> => {
    if (closed) return closed;
    closing = true;
    clearTimeout(reconnectTimer);
    reconnectTimer = undefined;
    clearConnectionTimers();
    const s = sock;
    closed = new Promise<void>((res) => {
      closedResolve = res;
    });
    if (s && s.readyState < 3) {
      sock = s;
      try {
        s.close(1000, 'client closed');
      } catch {
        closedResolve?.();
      }
      // A peer that never answers the close handshake must not keep close() pending forever.
      const guard = setTimeout(() => closedResolve?.(), 3000);
      void closed.then(() => clearTimeout(guard));
    } else {
      sock = undefined;
      closedResolve?.();
    }
    setState('closed', detail);
    return closed;
  };

  void connect();

  return {
    on(type: string, handler: (frame: never) => void): Unsubscribe {
      let hs = typed.get(type);
      if (!hs) typed.set(type, (hs = new Set()));
      hs.add(handler);
      return () => void hs.delete(handler);
    },
    onEvent(handler) {
      eventHandlers.add(handler);
      return () => void eventHandlers.delete(handler);
    },
    onState(handler) {
      stateHandlers.add(handler);
      return () => void stateHandlers.delete(handler);
    },
    state: () => state,
    cursor: () => lastCursor,
    topics: () => [...topics],
    subscribe(list, since) {
      if (since !== undefined && !CURSOR.test(since)) throw new TypeError(`not a hub cursor: ${JSON.stringify(since)}`);
      if (list.length === 0) return;
      for (const t of list) droppedEarly.delete(t);
      for (const t of list) topics.add(t);
      if (since !== undefined && lastCursor === undefined) lastCursor = since;
      if (state === 'open') send({ type: 'subscribe', topics: list, ...(since !== undefined ? { since } : {}) });
    },
    unsubscribe(list) {
      if (list.length === 0) return;
      for (const t of list) topics.delete(t);
      if (!topicsKnown) for (const t of list) droppedEarly.add(t);
      if (state === 'open') send({ type: 'unsubscribe', topics: list });
    },
    close: () => shutdown(),
  } as HubClient;
}

// ---- dashboards ---------------------------------------------------------------------------

/**
 * A `dashboard_update` as the hub sends it: `base` null is the full state (every committee);
 * else `committees` lists only those changed since the update whose cursor is `base`.
 * (A frame without `base`, from a hub older than the delta protocol, is a full state.)
 */
export type DashboardFrame = Omit<DashboardUpdate, 'base'> & { base?: string | null };

/** What applying one update did to a dashboard's state. */
export type ChainStep =
  /** A full state replaced what was there. */
  | { kind: 'replaced' }
  /** A delta chained on the last update applied: these committees were overwritten. */
  | { kind: 'applied'; committees: Array<number | string> }
  /** Another election's update, or one older than the state held (after a refetch). */
  | { kind: 'ignored' }
  /** Neither a full state nor chained on the last applied update: fetch the state again. */
  | { kind: 'broken' };

export type DashboardChain = {
  /** The state held (undefined until a full state or a snapshot arrived). */
  current(): DashboardSnapshot | undefined;
  /** The cursor of the last update applied (undefined: none yet on this connection, or a snapshot since). */
  chain(): string | undefined;
  /** Applies an update by the contract's rule (CONTRACT §5): base null replaces, base = chain() overwrites the listed committees. */
  update(frame: DashboardFrame): ChainStep;
  /**
   * Takes a snapshot from `GET /dashboard/{id}` unless the state held is newer. Deltas no longer
   * chain on it (their `base` is the cursor of an update, not of a snapshot): the next full
   * state does. Returns whether it was taken.
   */
  snapshot(s: DashboardSnapshot): boolean;
  /** A new connection: only a full state starts its chain. */
  restart(): void;
};

const sameId = (a: number | string, b: number | string) => String(a) === String(b);

/**
 * The chain rule of `dashboard_update` frames for one election, as a small state machine
 * (the SDK and the dashboard page use it; it does no I/O).
 */
export function createDashboardChain(electionId: number | string): DashboardChain {
  let current: DashboardSnapshot | undefined;
  let chain: string | undefined;
  /** committee id (text) → counts; `current.committees` is rebuilt from it after a delta. */
  let byId = new Map<string, DashboardSnapshot['committees'][number]>();

  const take = (s: {
    election_id: number | string;
    cursor: string;
    totals: DashboardSnapshot['totals'];
    committees: DashboardSnapshot['committees'];
  }) => {
    byId = new Map(
      s.committees.map((c) => [
        String(c.committee_id),
        { committee_id: c.committee_id, guarantees: c.guarantees, attendance: c.attendance, votes: c.votes },
      ]),
    );
    current = { election_id: s.election_id, cursor: s.cursor, totals: { ...s.totals }, committees: [...byId.values()] };
  };

  return {
    current: () => current,
    chain: () => chain,
    update(f) {
      if (!sameId(f.election_id, electionId)) return { kind: 'ignored' };
      if (f.base === null || f.base === undefined) {
        take(f);
        chain = f.cursor;
        return { kind: 'replaced' };
      }
      if (current === undefined || chain === undefined || f.base !== chain) return { kind: 'broken' };
      const listed: Array<number | string> = [];
      let added = false;
      for (const c of f.committees) {
        const key = String(c.committee_id);
        if (!byId.has(key)) added = true;
        byId.set(key, {
          committee_id: c.committee_id,
          guarantees: c.guarantees,
          attendance: c.attendance,
          votes: c.votes,
        });
        listed.push(c.committee_id);
      }
      let committees = [...byId.values()];
      // The full state lists committees in id order; one that appears later goes to its place.
      if (added) committees = committees.sort((a, b) => compareIdText(String(a.committee_id), String(b.committee_id)));
      current = { election_id: current.election_id, cursor: f.cursor, totals: { ...f.totals }, committees };
      if (added) byId = new Map(committees.map((c) => [String(c.committee_id), c]));
      chain = f.cursor;
      return { kind: 'applied', committees: listed };
    },
    snapshot(s) {
      if (!sameId(s.election_id, electionId)) return false;
      if (current !== undefined && compareCursors(s.cursor, current.cursor) < 0) return false;
      take(s);
      chain = undefined;
      return true;
    },
    restart() {
      chain = undefined;
    },
  };
}

/** Orders decimal id texts numerically (ids beyond 2^53 travel as strings). */
const compareIdText = (a: string, b: string): number => {
  const na = a.startsWith('-');
  const nb = b.startsWith('-');
  if (na !== nb) return na ? -1 : 1;
  const sign = na ? -1 : 1;
  const x = na ? a.slice(1) : a;
  const y = na ? b.slice(1) : b;
  if (x.length !== y.length) return (x.length < y.length ? -1 : 1) * sign;
  return (x < y ? -1 : x > y ? 1 : 0) * sign;
};

export type DashboardOptions = Omit<HubClientOptions, 'topics' | 'since'> & {
  /** A number, or a decimal string (ids of 2^53 and above only travel exactly as strings). */
  electionId: number | string;
  /**
   * Follow only the totals (topic `dashboard:{id}`): dashboard updates and no row events, a
   * small fraction of the bytes. Default false: `election:{id}`, updates and every row.
   */
  totalsOnly?: boolean;
  /** `http(s)://host` of the hub; default derived from `url` (ws→http, wss→https, without `/ws`). */
  httpUrl?: Source;
  /** fetch implementation; default `globalThis.fetch`. */
  fetch?: typeof globalThis.fetch;
  /**
   * The hub sends the full state right after the subscription; if none has come this long
   * after the start (a hub still computing a very large election, or not reachable),
   * `GET /dashboard/{id}` is asked instead (401, 403 and 404 reject the promise). Default 10 s.
   */
  firstStateTimeoutMs?: number;
};

/** What changed in a dashboard's state: everything, or these committees (the totals may change either way). */
export type DashboardChange = { full: true } | { full: false; committees: Array<number | string> };

export type DashboardSubscription = {
  /** The underlying client (state, cursor, typed frames). */
  client: HubClient;
  /** The current state: the last full state with every update chained on it. */
  snapshot(): DashboardSnapshot;
  onSnapshot(handler: (snapshot: DashboardSnapshot, change: DashboardChange) => void): Unsubscribe;
  /** Row and application events, once each, in cursor order (a feed); none with `totalsOnly`. */
  onEvent(handler: (event: HubEvent) => void): Unsubscribe;
  close(): Promise<void>;
};

/** `GET /dashboard/{id}` with the token as Bearer; throws with `status` on a non-2xx answer. */
export async function fetchDashboard(opts: {
  httpUrl: string;
  electionId: number | string;
  token: string;
  fetch?: typeof globalThis.fetch;
}): Promise<DashboardSnapshot> {
  const f = opts.fetch ?? globalThis.fetch;
  const res = await f(`${opts.httpUrl.replace(/\/+$/, '')}/dashboard/${opts.electionId}`, {
    headers: { authorization: `Bearer ${opts.token}` },
  });
  if (!res.ok)
    throw Object.assign(new Error(`GET /dashboard/${opts.electionId}: HTTP ${res.status}`), { status: res.status });
  const body = (await res.json()) as DashboardSnapshot;
  if (typeof body?.cursor !== 'string' || typeof body.totals !== 'object' || !Array.isArray(body.committees)) {
    throw new Error(`GET /dashboard/${opts.electionId}: not a dashboard snapshot`);
  }
  return body;
}

const httpOf = (wsUrl: string) => {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '') || '/';
  u.search = '';
  return u.toString().replace(/\/+$/, '');
};

/**
 * Follows an election's dashboard over one resuming connection: subscribes `election:{id}`
 * (or `dashboard:{id}` with `totalsOnly`); the hub answers with the full state (the promise
 * resolves with it: no separate snapshot request), then deltas. Each update is applied by the
 * chain rule (`createDashboardChain`). A broken chain is repaired twice over: the topic is
 * subscribed again (the hub answers a resubscription with a fresh full state, on which the
 * chain starts again) and `GET /dashboard/{id}` is fetched meanwhile, as the contract says.
 * After every reconnect the client resumes after its cursor (the feed misses nothing) and the
 * hub sends the full state again; after a `resync` too.
 */
export async function snapshotAndSubscribe(opts: DashboardOptions): Promise<DashboardSubscription> {
  const { electionId } = opts;
  const topic = `${opts.totalsOnly ? 'dashboard' : 'election'}:${electionId}`;
  const httpUrl = async () => (opts.httpUrl !== undefined ? resolve(opts.httpUrl) : httpOf(await resolve(opts.url)));
  const load = async () =>
    fetchDashboard({
      httpUrl: await httpUrl(),
      electionId,
      token: await resolve(opts.token),
      ...(opts.fetch ? { fetch: opts.fetch } : {}),
    });
  const maxMs = opts.backoff?.maxMs ?? 10_000;
  const initialMs = opts.backoff?.initialMs ?? 250;
  const firstStateTimeoutMs = opts.firstStateTimeoutMs ?? 10_000;

  const chain = createDashboardChain(electionId);
  const snapshotHandlers = new Set<(s: DashboardSnapshot, c: DashboardChange) => void>();
  const tell = (change: DashboardChange) => {
    const s = chain.current();
    if (s) for (const h of [...snapshotHandlers]) safely(h, s, change);
  };

  let stopped = false;
  let first: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  const ready = new Promise<void>((res, rej) => (first = { resolve: res, reject: rej }));
  const settled = () => {
    first?.resolve();
    first = undefined;
  };
  const failFirst = (err: unknown) => {
    first?.reject(err);
    first = undefined;
  };

  /** Full states applied so far: a snapshot fetched before the latest one is not taken. */
  let fulls = 0;
  let repairing = false;
  let repairTimer: ReturnType<typeof setTimeout> | undefined;
  let firstTimer: ReturnType<typeof setTimeout> | undefined;
  let attempt = 0;

  const fetchSnapshot = () => {
    const before = fulls;
    load().then(
      (s) => {
        if (stopped || fulls !== before) return; // a full state came meanwhile: it is newer and chains
        if (chain.snapshot(s)) tell({ full: true });
        settled();
      },
      (err: unknown) => {
        if (stopped || !first) return; // a repair's fetch: the resubscription's full state repairs anyway
        const status = (err as { status?: number } | null)?.status;
        if (status === 401 || status === 403 || status === 404) return failFirst(err);
        // No state yet and the hub not reachable over HTTP either: ask again, with backoff.
        const cap = Math.min(maxMs, initialMs * 2 ** Math.min(attempt++, 30));
        clearTimeout(firstTimer);
        firstTimer = setTimeout(
          () => {
            if (!stopped && chain.current() === undefined) fetchSnapshot();
          },
          Math.round(cap / 2 + (Math.random() * cap) / 2),
        );
      },
    );
  };

  /** A broken chain: resubscribe (a full state follows) and fetch the snapshot meanwhile; retried with backoff until a full state arrives. */
  const repair = () => {
    if (stopped || repairing) return;
    repairing = true;
    if (client.state() === 'open') client.subscribe([topic]);
    fetchSnapshot();
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(attempt++, 30));
    clearTimeout(repairTimer);
    repairTimer = setTimeout(
      () => {
        repairing = false;
        if (!stopped && chain.chain() === undefined) repair();
      },
      Math.max(1000, cap),
    );
  };

  const client = createHubClient({ ...opts, topics: [topic] });
  client.on('dashboard_update', (frame) => {
    if (stopped) return;
    const step = chain.update(frame as DashboardFrame);
    if (step.kind === 'replaced') {
      fulls++;
      repairing = false;
      attempt = 0;
      clearTimeout(repairTimer);
      clearTimeout(firstTimer);
      tell({ full: true });
      settled();
    } else if (step.kind === 'applied') {
      tell({ full: false, committees: step.committees });
    } else if (step.kind === 'broken') {
      repair();
    }
  });
  // A new connection's chain starts with its first full state.
  client.on('connection_success', () => chain.restart());
  // The full state follows the subscription at once. Should it not come (a hub still
  // computing a large election, or one that cannot be reached), the snapshot is asked for over
  // HTTP, which also tells a refused token (401/403) or an unknown election (404).
  firstTimer = setTimeout(() => {
    if (!stopped && chain.current() === undefined) fetchSnapshot();
  }, firstStateTimeoutMs);
  client.on('error', (e) => {
    if (first && (e.code === 'forbidden_topic' || e.code === 'bad_topic'))
      failFirst(Object.assign(new Error(`${topic}: ${e.code}: ${e.message}`), { code: e.code }));
  });
  client.onState((state, detail) => {
    if (state === 'closed' && first)
      failFirst(
        Object.assign(new Error(`connection closed before the first state (${detail.code ?? 'no code'})`), detail),
      );
  });

  const close = async () => {
    stopped = true;
    clearTimeout(repairTimer);
    clearTimeout(firstTimer);
    await client.close();
  };
  try {
    await ready;
  } catch (err) {
    await close();
    throw err;
  }

  return {
    client,
    snapshot: () => chain.current() as DashboardSnapshot,
    onSnapshot(handler) {
      snapshotHandlers.add(handler);
      return () => void snapshotHandlers.delete(handler);
    },
    onEvent: (handler) => client.onEvent(handler),
    close,
  };
}
