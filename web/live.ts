// The page's data layer, on the client SDK (client/index.ts): one resuming WebSocket for every
// election the page shows.
//
// Counter rule (CONTRACT §5): after the subscription the hub sends each election's full state
// (a `dashboard_update` with `base: null`), then deltas listing only the committees that
// changed; each is applied by the SDK's chain rule (createDashboardChain). A broken chain is
// repaired by subscribing the election again (the hub answers with a full state) and fetching
// `GET /dashboard/{id}` meanwhile. Row events only feed the list of recent changes; the page
// never computes totals from them.
//
// After the socket drops (a hub restarting closes it with 1001) the SDK reconnects with backoff
// and resumes after its last cursor, so the feed misses nothing, and the hub sends every
// election's full state again, so the counters include what changed while the page was away.
// An admin token without an election list follows `election:*` (rows of every election, to
// discover them) and `dashboard:{id}` for each election shown (`election:*` carries no totals).
import {
  type DashboardChain,
  type DashboardChange,
  type DashboardFrame,
  type DashboardSnapshot,
  type HubEvent,
  type RowEvent,
  createDashboardChain,
  createHubClient,
  fetchDashboard,
} from '../client/index.ts';

export type { DashboardChange, RowEvent };
export type Snapshot = DashboardSnapshot;
export type Counts = DashboardSnapshot['totals'];
export type CommitteeCounts = DashboardSnapshot['committees'][number];

/** An id as the hub writes it: a JSON number when it is a safe integer, else its exact decimal string. */
export type Id = number | string;
/** The id a text names (one spelling: no leading zeros), in the form the hub's frames use. */
export function idOf(text: string): Id | undefined {
  if (!/^[1-9][0-9]{0,18}$/.test(text) || (text.length === 19 && text > '9223372036854775807')) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : text;
}
export const compareIds = (a: Id, b: Id): number => {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
};

/** connecting: first attempt; reconnecting: lost, trying again; resynced: caught up after a loss. */
export type LinkState = 'connecting' | 'connected' | 'reconnecting' | 'resynced';

export type LiveOptions = {
  /** Where the hub is, e.g. `location.origin` (the page is served by the hub itself). */
  origin: string;
  token: string;
  elections: Id[];
  /** Learn elections from `election:*` (admin tokens): any election that changes gets shown. */
  discover: boolean;
  /** An election's dashboard changed: all of it (`change.full`) or the listed committees (and the totals). */
  onDashboard(snapshot: Snapshot, change: DashboardChange): void;
  onEvent(event: RowEvent): void;
  onState(state: LinkState, detail: string): void;
  /** The token was refused (401/403) or expired: reconnecting cannot help. */
  onFatal(message: string): void;
  /** An election seen for the first time (through `discover` or `watch`). */
  onElection?(electionId: Id): void;
};

export type Live = { watch(electionId: Id): void; close(): void };

const ROW_TYPES = new Set(['guarantee_update', 'attendance_update', 'voting_update']);
/** With no full state this long after the start (or a reconnect), ask GET /dashboard/{id}. */
const FIRST_STATE_MS = 4000;

const statusOf = (err: unknown): number | undefined => (err as { status?: number } | null)?.status;
const refused = (err: unknown) => statusOf(err) === 401 || statusOf(err) === 403;

type Followed = {
  chain: DashboardChain;
  /** Full states applied: a snapshot fetched before the latest one is dropped. */
  fulls: number;
  repairing: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
};

/** Starts following `opts.elections` over one socket. */
export function startLive(opts: LiveOptions): Live {
  const followed = new Map<string, Followed>();
  const ids = new Map<string, Id>();
  let closed = false;
  /** Elections still without their full state since the last reconnect (then: "resynced"). */
  let catchingUp: Set<string> | undefined;
  let catchUpTimer: ReturnType<typeof setTimeout> | undefined;

  const dashboardTopic = (id: Id) => (opts.discover ? `dashboard:${id}` : `election:${id}`);
  const key = (id: Id) => String(id);

  const fatal = (text: string) => {
    if (closed) return;
    close();
    opts.onFatal(text);
  };

  const follow = (id: Id): Followed => {
    let f = followed.get(key(id));
    if (!f) {
      f = { chain: createDashboardChain(id), fulls: 0, repairing: false, timer: undefined };
      followed.set(key(id), f);
      ids.set(key(id), id);
    }
    return f;
  };
  for (const id of opts.elections) follow(id);

  const caughtUp = (id: Id) => {
    if (!catchingUp?.delete(key(id)) || catchingUp.size > 0) return;
    catchingUp = undefined;
    clearTimeout(catchUpTimer);
    opts.onState('resynced', 'caught up after reconnecting');
  };

  /** GET /dashboard/{id}: the first state when the socket has not brought it, or meanwhile during a repair. */
  const fetchSnapshot = (id: Id, f: Followed) => {
    const before = f.fulls;
    fetchDashboard({ httpUrl: opts.origin, electionId: id, token: opts.token }).then(
      (snap) => {
        if (closed || f.fulls !== before) return; // a full state came meanwhile: newer, and deltas chain on it
        if (f.chain.snapshot(snap)) opts.onDashboard(f.chain.current() as Snapshot, { full: true });
        caughtUp(id);
      },
      (err: unknown) => {
        if (refused(err)) return fatal(`the hub refused the token (${statusOf(err)})`);
        if (statusOf(err) === 404) {
          // Not an election (any longer): stop following it.
          followed.delete(key(id));
          caughtUp(id);
        }
      },
    );
  };

  /** Asks GET /dashboard/{id} for elections whose full state has not come in time. */
  const armFirstState = (id: Id, f: Followed) => {
    clearTimeout(f.timer);
    f.timer = setTimeout(() => {
      if (!closed && f.chain.chain() === undefined) fetchSnapshot(id, f);
    }, FIRST_STATE_MS);
  };

  const repair = (id: Id, f: Followed) => {
    if (f.repairing || closed) return;
    f.repairing = true;
    if (client.state() === 'open') client.subscribe([dashboardTopic(id)]);
    fetchSnapshot(id, f);
    clearTimeout(f.timer);
    f.timer = setTimeout(() => {
      f.repairing = false;
      if (!closed && f.chain.chain() === undefined) repair(id, f);
    }, 3000);
  };

  const topics = opts.discover
    ? ['election:*', ...[...ids.values()].map((id) => `dashboard:${id}`)]
    : [...ids.values()].map((id) => `election:${id}`);
  const client = createHubClient({ url: `${opts.origin.replace(/^http/, 'ws')}/ws`, token: opts.token, topics });
  for (const [k, f] of followed) armFirstState(ids.get(k) as Id, f);

  let lost = false;
  client.onState((state, detail) => {
    if (closed) return;
    if (state === 'reconnecting') {
      lost = true;
      const why =
        detail.code === 1001
          ? 'the hub is restarting'
          : detail.code
            ? `connection lost (${detail.code})`
            : 'connection lost';
      opts.onState(
        'reconnecting',
        `${why}; retrying${detail.retryInMs !== undefined ? ` in ${detail.retryInMs} ms` : ''}`,
      );
    } else if (state === 'open') {
      if (!lost) return opts.onState('connected', 'live');
      // Back: the SDK resumes the events; each election's full state follows its subscription.
      lost = false;
      catchingUp = new Set(followed.keys());
      for (const [k, f] of followed) armFirstState(ids.get(k) as Id, f);
      clearTimeout(catchUpTimer);
      catchUpTimer = setTimeout(() => {
        if (catchingUp) opts.onState('resynced', 'resumed; some totals pending');
        catchingUp = undefined;
      }, FIRST_STATE_MS * 2);
      if (catchingUp.size === 0) {
        catchingUp = undefined;
        clearTimeout(catchUpTimer);
        opts.onState('resynced', 'caught up after reconnecting');
      }
    } else if (state === 'closed' && detail.code === 4001) {
      fatal('the token expired: sign in again');
    }
  });
  // A new connection: each election's chain starts again with its first full state.
  client.on('connection_success', () => {
    for (const f of followed.values()) f.chain.restart();
  });
  client.on('dashboard_update', (frame) => {
    if (closed) return;
    const f = followed.get(key(frame.election_id));
    if (!f) {
      if (opts.discover) watch(frame.election_id);
      return;
    }
    const step = f.chain.update(frame as DashboardFrame);
    const snap = f.chain.current() as Snapshot;
    if (step.kind === 'replaced') {
      f.fulls++;
      f.repairing = false;
      clearTimeout(f.timer);
      opts.onDashboard(snap, { full: true });
      caughtUp(frame.election_id);
    } else if (step.kind === 'applied') {
      opts.onDashboard(snap, { full: false, committees: step.committees });
    } else if (step.kind === 'broken') {
      repair(frame.election_id, f);
    }
  });
  client.onEvent((event: HubEvent) => {
    if (closed || !ROW_TYPES.has(event.type)) return;
    const row = event as RowEvent;
    if (row.election_id === null) return;
    if (followed.has(key(row.election_id))) opts.onEvent(row);
    else if (opts.discover) watch(row.election_id);
  });
  client.on('error', (e) => {
    if (e.code === 'forbidden_topic') fatal(`the hub refused a topic: ${e.message}`);
  });
  client.on('resync', (frame) => {
    // The hub no longer holds our cursor: the full states that follow are the truth again.
    opts.onState('resynced', `history expired for ${frame.topics.join(', ')}: took fresh totals`);
  });

  opts.onState('connecting', 'connecting');

  function watch(id: Id): void {
    if (followed.has(key(id)) || closed) return;
    const f = follow(id);
    opts.onElection?.(id);
    // Live from now: the full state that answers the subscription counts everything before.
    client.subscribe([dashboardTopic(id)]);
    armFirstState(id, f);
  }

  function close(): void {
    closed = true;
    clearTimeout(catchUpTimer);
    for (const f of followed.values()) clearTimeout(f.timer);
    void client.close();
  }

  return { watch, close };
}
