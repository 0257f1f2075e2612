// The page's data layer, on the client SDK (client/index.ts): dashboard snapshots over HTTP,
// changes over one resuming WebSocket for every election the page shows.
//
// Counter rule: totals come from a snapshot (`GET /dashboard/{id}`) and are replaced by every
// newer `dashboard_update` frame (the hub sends one at most every 250 ms per election, and it
// includes every event before it). Row events only feed the list of recent changes. Newer is
// decided by cursor, so a snapshot that answers late never undoes a fresher update.
//
// After the socket drops (a hub restarting closes it with 1001) the SDK reconnects with backoff
// and resumes after its last cursor, so the feed misses nothing; the page also takes a fresh
// snapshot of every election, because the changes made while it was away produce no
// `dashboard_update` of their own if nothing is written after the reconnect.
import { type DashboardSnapshot, type HubEvent, type RowEvent, compareCursors, createHubClient, fetchDashboard } from '../client/index.ts';

export type { RowEvent };
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
  onSnapshot(snapshot: Snapshot, source: 'snapshot' | 'update'): void;
  onEvent(event: RowEvent): void;
  onState(state: LinkState, detail: string): void;
  /** The token was refused (401/403) or expired: reconnecting cannot help. */
  onFatal(message: string): void;
  /** An election seen for the first time (through `discover` or `watch`). */
  onElection?(electionId: Id): void;
};

export type Live = { watch(electionId: Id): void; close(): void };

const ROW_TYPES = new Set(['guarantee_update', 'attendance_update', 'voting_update']);

const statusOf = (err: unknown): number | undefined => (err as { status?: number } | null)?.status;
const refused = (err: unknown) => statusOf(err) === 401 || statusOf(err) === 403;
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Starts following `opts.elections`; snapshots first, so the socket resumes from them. */
export function startLive(opts: LiveOptions): Live {
  const current = new Map<Id, Snapshot>();
  const known = new Set<Id>(opts.elections);
  let closed = false;
  let client: ReturnType<typeof createHubClient> | undefined;
  let retry: ReturnType<typeof setTimeout> | undefined;

  const fatal = (text: string) => {
    if (closed) return;
    close();
    opts.onFatal(text);
  };

  /** Keeps the newest of what we have and `next`; tells the page when it changed. */
  const apply = (next: Snapshot, source: 'snapshot' | 'update') => {
    const have = current.get(next.election_id);
    if (have && compareCursors(next.cursor, have.cursor) < 0) return;
    const snap: Snapshot = { election_id: next.election_id, cursor: next.cursor, totals: next.totals, committees: next.committees };
    current.set(next.election_id, snap);
    opts.onSnapshot(snap, source);
  };

  const load = async (id: Id): Promise<Snapshot | undefined> => {
    try {
      return await fetchDashboard({ httpUrl: opts.origin, electionId: id, token: opts.token });
    } catch (err) {
      if (statusOf(err) === 404) {
        known.delete(id);
        return undefined;
      }
      throw err;
    }
  };

  const refreshAll = async () => {
    const snaps = await Promise.all([...known].map(load));
    for (const s of snaps) if (s) apply(s, 'snapshot');
    return snaps.filter((s): s is Snapshot => s !== undefined);
  };

  function follow(since: string | undefined): void {
    const topics = opts.discover ? ['election:*'] : [...known].map((id) => `election:${id}`);
    const c = createHubClient({
      url: `${opts.origin.replace(/^http/, 'ws')}/ws`,
      token: opts.token,
      topics,
      ...(since !== undefined ? { since } : {}),
    });
    client = c;
    let lost = false;
    c.onState((state, detail) => {
      if (closed) return;
      if (state === 'reconnecting') {
        lost = true;
        const why = detail.code === 1001 ? 'the hub is restarting' : detail.code ? `connection lost (${detail.code})` : 'connection lost';
        opts.onState('reconnecting', `${why}; retrying${detail.retryInMs !== undefined ? ` in ${detail.retryInMs} ms` : ''}`);
      } else if (state === 'open') {
        if (!lost) return opts.onState('connected', 'live');
        // Back: the SDK resumes the events; the counters get a fresh snapshot.
        refreshAll().then(
          () => opts.onState('resynced', 'caught up after reconnecting'),
          (err: unknown) => (refused(err) ? fatal(`the hub refused the token (${statusOf(err)})`) : opts.onState('resynced', 'resumed; snapshot pending')),
        );
      } else if (state === 'closed' && detail.code === 4001) {
        fatal('the token expired: sign in again');
      }
    });
    c.on('dashboard_update', (frame) => {
      if (known.has(frame.election_id)) apply(frame, 'update');
      else if (opts.discover) watch(frame.election_id);
    });
    c.onEvent((event: HubEvent) => {
      if (!ROW_TYPES.has(event.type)) return;
      const row = event as RowEvent;
      if (row.election_id === null) return;
      if (known.has(row.election_id)) opts.onEvent(row);
      else if (opts.discover) watch(row.election_id);
    });
    c.on('resync', (frame) => {
      // The hub no longer holds our cursor: the snapshots are the truth again.
      void refreshAll().then(
        () => opts.onState('resynced', `history expired for ${frame.topics.join(', ')}: took fresh snapshots`),
        () => undefined,
      );
    });
  }

  /** First snapshots, retried while the hub cannot be reached; then the socket from their cursor. */
  const begin = (attempt: number) => {
    refreshAll().then(
      (snaps) => {
        if (closed) return;
        // Resume from the oldest snapshot: each election's feed then starts at (or before) its own.
        const since = snaps.map((s) => s.cursor).sort(compareCursors)[0];
        follow(since);
      },
      (err: unknown) => {
        if (closed) return;
        if (refused(err)) return fatal(`the hub refused the token (${statusOf(err)})`);
        const delay = Math.min(5000, 250 * 2 ** attempt);
        opts.onState('connecting', `${message(err)}; retrying in ${delay} ms`);
        retry = setTimeout(() => begin(attempt + 1), delay);
      },
    );
  };

  function watch(id: Id): void {
    if (known.has(id) || closed) return;
    known.add(id);
    opts.onElection?.(id);
    load(id).then(
      (snap) => {
        if (!snap || closed) return;
        apply(snap, 'snapshot');
        // Live from now: the snapshot already counts everything before it.
        if (!opts.discover) client?.subscribe([`election:${id}`]);
      },
      (err: unknown) => (refused(err) ? fatal(`the hub refused the token (${statusOf(err)})`) : undefined),
    );
  }

  function close(): void {
    closed = true;
    clearTimeout(retry);
    void client?.close();
  }

  opts.onState('connecting', 'loading snapshots');
  begin(0);
  return { watch, close };
}
