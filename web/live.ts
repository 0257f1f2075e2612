// The page's data layer: dashboard snapshots over HTTP, changes over one WebSocket.
//
// Counter rule: totals come from a snapshot (`GET /dashboard/{id}`) and are replaced by every
// `dashboard_update` frame, which the hub sends at most every 250 ms per election and which
// includes every event before it. Row events only feed the list of recent changes.
//
// After the socket drops (the hub restarting closes it with 1001) the layer reconnects with
// backoff, takes a fresh snapshot of every election it shows and subscribes from the last
// cursor it saw, so the feed gets the missed changes and the counters are exact again.

export type Counts = { guarantees: number; attendance: number; votes: number };
export type CommitteeCounts = Counts & { committee_id: number };
export type Snapshot = { election_id: number; cursor: string; totals: Counts; committees: CommitteeCounts[] };

export type RowEvent = {
  type: 'guarantee_update' | 'attendance_update' | 'voting_update';
  action: 'created' | 'updated' | 'deleted';
  election_id: number | null;
  committee_id: number | null;
  id: unknown;
  data: Record<string, unknown>;
  cursor: string;
  committed_at: string;
};

/** connecting: first attempt; reconnecting: lost, trying again; resynced: caught up after a loss. */
export type LinkState = 'connecting' | 'connected' | 'reconnecting' | 'resynced';

export type LiveOptions = {
  /** Where the hub is, e.g. `location.origin`. */
  origin: string;
  token: string;
  elections: number[];
  /** Learn elections from `election:*` (admin tokens): any election that changes gets watched. */
  discover: boolean;
  onSnapshot(snapshot: Snapshot, source: 'snapshot' | 'update'): void;
  onEvent(event: RowEvent): void;
  onState(state: LinkState, detail: string): void;
  /** The token was refused (401/403) or expired: reconnecting cannot help. */
  onFatal(message: string): void;
  /** An election seen for the first time through `discover` (or a `watch` call). */
  onElection?(electionId: number): void;
};

export type Live = { watch(electionId: number): void; close(): void };

const ROW_TYPES = new Set(['guarantee_update', 'attendance_update', 'voting_update']);
const PING_EVERY_MS = 25_000;

export class FatalError extends Error {}

/** GET /dashboard/{id} with the token; FatalError for 401/403, plain errors for the rest. */
export async function fetchSnapshot(origin: string, token: string, electionId: number, signal?: AbortSignal): Promise<Snapshot | null> {
  const res = await fetch(`${origin}/dashboard/${electionId}`, {
    headers: { authorization: `Bearer ${token}` },
    cache: 'no-store',
    ...(signal ? { signal } : {}),
  });
  if (res.status === 404) return null;
  if (res.status === 401 || res.status === 403) {
    const body = (await res.json().catch(() => ({}))) as { reason?: string };
    throw new FatalError(`the hub refused the token (${res.status}${body.reason ? `: ${body.reason}` : ''})`);
  }
  if (!res.ok) throw new Error(`GET /dashboard/${electionId} answered ${res.status}`);
  return (await res.json()) as Snapshot;
}

export function startLive(opts: LiveOptions): Live {
  const watched = new Set<number>();
  const lastCursor = new Map<number, string>();
  let socket: WebSocket | undefined;
  let closed = false;
  let attempt = 0;
  let everConnected = false;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let pingTimer: ReturnType<typeof setInterval> | undefined;
  let abort = new AbortController();

  const wsUrl = `${opts.origin.replace(/^http/, 'ws')}/ws?subscribe=none`;
  const send = (ws: WebSocket, frame: unknown) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  };

  /** Snapshot first, then subscribe from the last cursor seen (else the snapshot's). */
  async function follow(ws: WebSocket, id: number): Promise<void> {
    const snap = await fetchSnapshot(opts.origin, opts.token, id, abort.signal);
    if (ws !== socket) return;
    if (!snap) {
      watched.delete(id);
      return;
    }
    opts.onSnapshot(snap, 'snapshot');
    send(ws, { type: 'subscribe', topics: [`election:${id}`], since: lastCursor.get(id) ?? snap.cursor });
  }

  function connect(): void {
    if (closed) return;
    abort = new AbortController();
    // The token travels as a subprotocol (`bearer.<jwt>`), not in the URL the server logs.
    const ws = new WebSocket(wsUrl, [`bearer.${opts.token}`]);
    socket = ws;
    ws.onopen = () => {
      void (async () => {
        try {
          await Promise.all([...watched].map((id) => follow(ws, id)));
          if (opts.discover) send(ws, { type: 'subscribe', topics: ['election:*'] });
          if (ws !== socket) return;
          attempt = 0;
          opts.onState(everConnected ? 'resynced' : 'connected', everConnected ? 'caught up after reconnecting' : 'live');
          everConnected = true;
        } catch (err) {
          if (err instanceof FatalError) return fatal(err.message);
          // The hub answered the upgrade but not the snapshot (database trouble): start over.
          if (ws === socket) ws.close(4000, 'snapshot failed');
        }
      })();
      clearInterval(pingTimer);
      pingTimer = setInterval(() => send(ws, { type: 'ping' }), PING_EVERY_MS);
    };
    ws.onmessage = (msg) => {
      if (ws !== socket || typeof msg.data !== 'string') return;
      let frame: { type?: unknown; [k: string]: unknown };
      try {
        frame = JSON.parse(msg.data) as typeof frame;
      } catch {
        return;
      }
      handle(ws, frame);
    };
    ws.onclose = (ev) => {
      if (ws !== socket) return;
      clearInterval(pingTimer);
      abort.abort();
      if (closed) return;
      if (ev.code === 4001) return fatal('the token expired: sign in again');
      if (ev.code === 1008) return fatal(`the hub closed the connection: ${ev.reason || 'policy violation'}`);
      attempt++;
      // 250 ms, 500 ms, 1 s ... capped at 5 s, with jitter so many pages do not return at once.
      const delay = Math.min(5000, 250 * 2 ** Math.min(attempt - 1, 5)) * (0.75 + Math.random() * 0.5);
      opts.onState(everConnected ? 'reconnecting' : 'connecting', ev.code === 1001 ? 'the hub is restarting' : `connection lost (${ev.code})`);
      retryTimer = setTimeout(connect, delay);
    };
  }

  function handle(ws: WebSocket, frame: { type?: unknown; [k: string]: unknown }): void {
    const type = String(frame.type);
    if (type === 'dashboard_update') {
      const snap = frame as unknown as Snapshot;
      if (watched.has(snap.election_id)) opts.onSnapshot(snap, 'update');
      else if (opts.discover) watch(snap.election_id);
      return;
    }
    if (ROW_TYPES.has(type)) {
      const event = frame as unknown as RowEvent;
      const id = event.election_id;
      if (id === null) return;
      if (!watched.has(id)) {
        if (opts.discover) watch(id);
        return;
      }
      lastCursor.set(id, event.cursor);
      opts.onEvent(event);
      return;
    }
    if (type === 'resync') {
      // The outbox no longer holds our cursor: the snapshot is the truth again.
      const topics = Array.isArray(frame.topics) ? frame.topics.map(String) : [];
      for (const t of topics) {
        const m = /^election:(\d+)$/.exec(t);
        if (!m) continue;
        const id = Number(m[1]);
        lastCursor.delete(id);
        void follow(ws, id).then(
          () => opts.onState('resynced', 'history expired: took a fresh snapshot'),
          (err: unknown) => (err instanceof FatalError ? fatal(err.message) : undefined),
        );
      }
      return;
    }
    if (type === 'error') console.warn('hub error frame', frame);
  }

  function fatal(message: string): void {
    close();
    opts.onFatal(message);
  }

  function watch(id: number): void {
    if (watched.has(id) || closed) return;
    watched.add(id);
    opts.onElection?.(id);
    const ws = socket;
    if (ws && ws.readyState === WebSocket.OPEN) {
      void follow(ws, id).catch((err: unknown) => {
        if (err instanceof FatalError) fatal(err.message);
        else if (ws === socket) ws.close(4000, 'snapshot failed');
      });
    }
  }

  function close(): void {
    closed = true;
    clearTimeout(retryTimer);
    clearInterval(pingTimer);
    abort.abort();
    socket?.close(1000, 'page closed');
  }

  for (const id of opts.elections) watched.add(id);
  opts.onState('connecting', 'opening the connection');
  connect();
  return { watch, close };
}
