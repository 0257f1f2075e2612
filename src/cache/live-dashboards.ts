import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import { type Position, ZERO, compare } from '../events/position.ts';
import { DashboardSnapshot } from '../events/schema.ts';
import type { Id } from '../events/topics.ts';
import { errorMessage } from '../errors.ts';
import { type TotalsBook, type TotalsEvent, createTotalsBook } from './totals.ts';
import { watchedOf } from './dashboard.ts';

/** Why a dashboard is computed in full (label values of hub_dashboard_computations_total). */
export type ComputationReason = 'first_use' | 'resync' | 'verify';

/** Why every held election is recomputed (logged). */
export type ResyncCause = 'truncate' | 'gap' | 'watched';

export type LiveDashboards = {
  /** The reader's ordered batches (synchronously, in order, before anything else runs). */
  apply(events: readonly TotalsEvent[]): void;
  /**
   * A socket starts receiving election `id`'s dashboard (subscribe, auto-subscribe,
   * resubscribe, resume): the full state to send it first, or undefined when the next
   * update published for the election is itself the full state (it is not loaded yet).
   */
  joined(id: Id): string | undefined;
  /** The body of GET /dashboard/{id}: from the maintained numbers (null: no such election). */
  snapshot(id: Id): Promise<string | null>;
  /** Every held election is recomputed (the chain of events broke). */
  resyncAll(cause: ResyncCause): void;
  /** Elections held on this node (tests, health). */
  held(): number;
  stop(): void;
};

export type LiveDashboardsOptions = {
  /**
   * A computed snapshot as JSON (null: no such election) at least as new as `min` (shared
   * across nodes through the cache: src/cache/dashboard.ts `refresh`), counted by `reason`.
   * `fresh`: computed by this call, never a cached or shared one (a verification, a resync
   * after a change of hub.watched: what they look for moves no position, so a snapshot
   * computed before it can carry the very cursor `min` asks for). `watched`: the fingerprint of
   * hub.watched this node counts under; a cached or shared snapshot counted under another set
   * is not taken (undefined: not known, any).
   */
  compute: (
    id: Id,
    o: { reason: ComputationReason; min: Position; urgent: boolean; fresh: boolean; watched: string | undefined },
  ) => Promise<string | null>;
  /** The reader's position: every event up to it has been applied. */
  position: () => Position | undefined;
  /** Resolves true once the reader has reached `p` (false after a while). */
  delivered: (p: Position) => Promise<boolean>;
  /** Sockets on this node receiving election `id`'s updates (the `d:E` topic). */
  subscribers: (id: Id) => number;
  /** Somebody fetched this election's snapshot from this node recently. */
  interested: (id: Id) => boolean;
  /** Told of every GET /dashboard/{id}. */
  onRequest?: (id: Id) => void;
  /** The current horizon of the database (everything committed below it can be read): GET waits for the reader to reach it. */
  horizon?: () => Promise<Position>;
  /** Publishes an update frame to the election's receivers (serialized once). */
  publish: (id: Id, frame: string) => void;
  /** DASHBOARD_DEBOUNCE: at most one update per election per this. */
  debounceMs: number;
  /** DASHBOARD_VERIFY_INTERVAL: each held election is checked against the database this often (0: never). */
  verifyMs: number;
  /** A fingerprint of hub.watched: when it changes, every held election is recomputed. */
  watched?: () => Promise<string>;
  watchedCheckMs?: number;
  /** How long an election nobody receives or fetched lately stays held (a reconnect costs no computation). */
  graceMs?: number;
  /** Events buffered per computation before it is redone from a newer position. */
  maxBuffered?: number;
  metrics: Pick<Metrics, 'cacheRequests' | 'dashboardDrift'>;
  log: Logger;
};

type Meta = {
  timer: NodeJS.Timeout | undefined;
  lastCutAt: number;
  verifyAt: number;
  unwantedSince: number | undefined;
  verifying: boolean;
};

const RETRY_MAX_MS = 30_000;
const ABSENT_RETRY_MS = 5_000;

/**
 * Drives the totals book (src/cache/totals.ts): which elections are held, their full
 * computations (only at first use, after a broken chain, and as a periodic verification),
 * and the `dashboard_update` frames cut from the numbers, at most one per election per
 * debounce interval, serialized once per election and published on its `d:E` topic.
 *
 * Held: every election somebody on this node receives (a socket on `election:E` or
 * `dashboard:E`) or fetched lately (GET /dashboard/{id}); one that nobody wants any more is
 * dropped after `graceMs`. Steady writes cost no computation: only their events' effects.
 *
 * Updates are never ahead of the stream: an election's numbers go out (updates, snapshots)
 * only once the reader has reached its snapshot's cursor, and each cut's cursor is the
 * reader's position, up to which every event is applied.
 */
export function createLiveDashboards(opts: LiveDashboardsOptions): LiveDashboards {
  const { log, metrics } = opts;
  const book: TotalsBook = createTotalsBook({
    ...(opts.maxBuffered !== undefined ? { maxBuffered: opts.maxBuffered } : {}),
  });
  const graceMs = opts.graceMs ?? 60_000;
  const meta = new Map<Id, Meta>();
  /** Loads in flight (one per election), resolving true when live, false for no such election. */
  const loads = new Map<Id, Promise<boolean>>();
  /** What the next computation of a load counts as (a resync during a load makes it 'resync'). */
  const reasons = new Map<Id, ComputationReason>();
  /** Elections whose next load must be computed anew (hub.watched changed since their numbers). */
  const uncached = new Set<Id>();
  const retries = new Map<Id, { timer: NodeJS.Timeout; delay: number }>();
  /** Elections found absent: not computed again for a while, whatever events name them. */
  const absent = new Map<Id, number>();
  let stopped = false;
  let watchedPrint: string | undefined;
  let watchedAt = 0;
  /** The first read of hub.watched (loads wait for it: they take cached snapshots only under its set). */
  let watchedKnown: Promise<void> = Promise.resolve();

  const metaOf = (id: Id): Meta => {
    let m = meta.get(id);
    if (!m) {
      m = { timer: undefined, lastCutAt: 0, verifyAt: nextVerify(), unwantedSince: undefined, verifying: false };
      meta.set(id, m);
    }
    return m;
  };
  // Spread over the interval, so elections loaded together are not verified together.
  function nextVerify(): number {
    return opts.verifyMs > 0 ? Date.now() + opts.verifyMs * (0.9 + Math.random() * 0.2) : Number.POSITIVE_INFINITY;
  }

  const forget = (id: Id) => {
    const m = meta.get(id);
    if (m?.timer) clearTimeout(m.timer);
    meta.delete(id);
    const r = retries.get(id);
    if (r) clearTimeout(r.timer);
    retries.delete(id);
    uncached.delete(id);
    book.drop(id);
  };

  const wanted = (id: Id) => opts.subscribers(id) > 0 || opts.interested(id);

  /** The live numbers are complete: the reader has reached their snapshot's cursor. */
  const settled = (id: Id): boolean => {
    const c = book.liveCursor(id);
    const p = opts.position();
    return c !== undefined && p !== undefined && compare(p, c) >= 0;
  };
  const settle = async (id: Id): Promise<boolean> => {
    for (let i = 0; i < 12 && !stopped; i++) {
      const c = book.liveCursor(id);
      if (!c) return false;
      if (settled(id)) return true;
      await opts.delivered(c);
    }
    return settled(id);
  };

  /** One update for `id` now (if anything changed since the last one). */
  const cutNow = (id: Id) => {
    if (stopped) return;
    const m = metaOf(id);
    const at = opts.position();
    if (!at || !settled(id)) {
      // Behind its snapshot: the update waits for the reader (it never goes early).
      void settle(id).then((ok) => ok && schedule(id, 0));
      return;
    }
    const receivers = opts.subscribers(id) > 0;
    const r = book.cut(id, at, receivers);
    m.lastCutAt = Date.now();
    if (r?.frame !== undefined) opts.publish(id, r.frame);
  };

  function schedule(id: Id, delayMs?: number) {
    if (stopped || !book.isLive(id)) return;
    const m = metaOf(id);
    if (m.timer) return;
    const since = Date.now() - m.lastCutAt;
    const delay = delayMs ?? Math.max(20, opts.debounceMs - since);
    m.timer = setTimeout(() => {
      m.timer = undefined;
      cutNow(id);
    }, delay);
  }

  const parse = (json: string): DashboardSnapshot => {
    const r = DashboardSnapshot.safeParse(JSON.parse(json));
    if (!r.success) throw new Error(`computed snapshot does not parse: ${r.error.message.slice(0, 200)}`);
    return r.data;
  };

  /** The start position of a computation: the reader must have started (earlier events never come). */
  const startPosition = async (): Promise<void> => {
    while (!opts.position() && !stopped) {
      // Not even a reader yet: wait a little instead of spinning on an answer that comes at once.
      if (!(await opts.delivered(ZERO))) await new Promise((r) => setTimeout(r, 50));
    }
  };

  /** Computes `id` until it is live (true) or known absent (false); a resync meanwhile computes again. */
  const runLoad = async (id: Id, urgent: boolean): Promise<boolean> => {
    // Once asked for, every attempt of this load is computed anew (one superseded by a resync too).
    let fresh = false;
    for (let tries = 0; ; tries++) {
      if (stopped) return false;
      await watchedKnown;
      await startPosition();
      // Read and begun in one synchronous step: no batch of the reader can fall between them.
      const from = opts.position() ?? ZERO;
      const attempt = book.begin(id, 'load', from);
      const reason = reasons.get(id) ?? 'first_use';
      // Taken before the computation: a change of hub.watched during it marks it again.
      if (uncached.delete(id)) fresh = true;
      let json: string | null;
      try {
        json = await opts.compute(id, { reason, min: from, urgent, fresh, watched: watchedPrint });
      } catch (err) {
        book.fail(id, attempt);
        if (fresh) uncached.add(id);
        throw err;
      }
      if (book.attempt(id) !== attempt) {
        if (!book.has(id)) return false; // dropped meanwhile
        continue; // a resync restarted it
      }
      if (json === null) {
        book.fail(id, attempt);
        absent.set(id, Date.now() + ABSENT_RETRY_MS);
        forget(id);
        return false;
      }
      const r = book.complete(id, attempt, parse(json), opts.position() ?? from);
      if (r.outcome === 'stale' || r.outcome === 'ahead') {
        if (tries >= 5) throw new Error('dashboard snapshots keep coming back older than the stream');
        continue;
      }
      if (r.outcome === 'superseded') continue;
      absent.delete(id);
      // Computed under a set of watched tables this node has not seen yet: look now (a change
      // recomputes every held election) rather than at the next poll.
      const counted = watchedOf(json);
      if (counted !== undefined && watchedPrint !== undefined && counted !== watchedPrint) void checkWatched();
      await settle(id);
      // Invalidated while waiting for the reader (a TRUNCATE): this load is void, go again.
      if (!book.isLive(id)) {
        if (!book.has(id) || stopped) return false;
        continue;
      }
      reasons.delete(id);
      const m = metaOf(id);
      m.verifyAt = nextVerify();
      if (m.timer) {
        clearTimeout(m.timer);
        m.timer = undefined;
      }
      schedule(id, 0); // the full state (base null) to every receiver
      return true;
    }
  };

  /** Loads `id` unless a load is in flight; failures are retried while somebody wants it. */
  const ensure = (id: Id, reason: ComputationReason, urgent: boolean): Promise<boolean> => {
    const running = loads.get(id);
    if (running) return running;
    if (!reasons.has(id)) reasons.set(id, reason);
    // Forgotten in the same step as it settles: a resync right after must start a new load,
    // not be handed this finished one.
    const run: { done: boolean; p?: Promise<boolean> } = { done: false };
    const p = (async () => {
      try {
        return await runLoad(id, urgent);
      } finally {
        run.done = true;
        if (loads.get(id) === run.p) loads.delete(id);
      }
    })();
    run.p = p;
    if (!run.done) loads.set(id, p);
    p.then(
      () => retries.delete(id),
      (err: unknown) => {
        log.warn({ electionId: id, err: errorMessage(err) }, 'dashboard computation failed');
        if (stopped) return;
        const prev = retries.get(id);
        const delay = Math.min(RETRY_MAX_MS, (prev?.delay ?? 250) * 2);
        retries.set(id, {
          delay,
          timer: setTimeout(() => {
            if (stopped || loads.has(id)) return;
            if (wanted(id)) void ensure(id, reasons.get(id) ?? reason, false).catch(() => undefined);
            else forget(id);
          }, delay),
        });
      },
    );
    return p;
  };

  const verify = async (id: Id) => {
    const m = metaOf(id);
    if (m.verifying || loads.has(id) || !settled(id)) return;
    m.verifying = true;
    try {
      const from = opts.position();
      if (!from) return;
      const attempt = book.begin(id, 'verify', from);
      let json: string | null;
      try {
        json = await opts.compute(id, {
          reason: 'verify',
          min: from,
          urgent: false,
          fresh: true,
          watched: watchedPrint,
        });
      } catch (err) {
        book.fail(id, attempt);
        throw err;
      }
      if (json === null) {
        book.fail(id, attempt);
        return; // the election row is gone: its numbers stay as the stream left them
      }
      const snap = parse(json);
      let r = book.complete(id, attempt, snap, opts.position() ?? from);
      // Compared at the same position: wait until the reader has reached the snapshot.
      for (let i = 0; r.outcome === 'ahead' && i < 12 && !stopped; i++) {
        await opts.delivered(r.cursor);
        r = book.complete(id, attempt, snap, opts.position() ?? from);
      }
      if (r.outcome === 'ahead') book.fail(id, attempt);
      if (r.outcome === 'drift') {
        metrics.dashboardDrift.inc();
        log.warn(
          { electionId: id, committees: r.committees.slice(0, 20), count: r.committees.length },
          'dashboard totals drifted from the database: corrected',
        );
        schedule(id);
      }
    } catch (err) {
      log.warn({ electionId: id, err: errorMessage(err) }, 'dashboard verification failed');
    } finally {
      m.verifying = false;
      m.verifyAt = nextVerify();
    }
  };

  const checkWatched = async () => {
    if (!opts.watched) return;
    try {
      const print = await opts.watched();
      if (watchedPrint !== undefined && print !== watchedPrint) {
        log.info('hub.watched changed: recomputing every held dashboard');
        resyncAll('watched');
      }
      watchedPrint = print;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, 'reading hub.watched failed');
    }
  };

  // Several breaks in one synchronous turn (a page of malformed rows) need one resync: the
  // loads it starts take their start position only after the turn.
  let resyncedThisTurn = false;
  function resyncAll(cause: ResyncCause) {
    if (stopped || resyncedThisTurn) return;
    resyncedThisTurn = true;
    queueMicrotask(() => (resyncedThisTurn = false));
    const ids = [...book.held()];
    if (ids.length > 0) log.info({ cause, elections: ids.length }, 'recomputing held dashboards');
    for (const id of ids) {
      book.invalidate(id);
      const m = meta.get(id);
      if (m?.timer) {
        clearTimeout(m.timer);
        m.timer = undefined;
      }
      reasons.set(id, 'resync');
      // A TRUNCATE or a gap is in the order (a snapshot past it has it); hub.watched is not.
      if (cause === 'watched') uncached.add(id);
      void ensure(id, 'resync', false).catch(() => undefined);
    }
  }

  // Housekeeping: drop what nobody wants, start due verifications, watch hub.watched.
  const tickMs = Math.max(50, Math.min(1000, opts.verifyMs > 0 ? opts.verifyMs / 4 : 1000));
  const tick = setInterval(() => {
    if (stopped) return;
    const now = Date.now();
    for (const id of [...book.held()]) {
      const m = metaOf(id);
      if (wanted(id) || loads.has(id)) m.unwantedSince = undefined;
      else if (m.unwantedSince === undefined) m.unwantedSince = now;
      else if (now - m.unwantedSince >= graceMs) {
        forget(id);
        continue;
      }
      if (now >= m.verifyAt && book.isLive(id)) void verify(id);
    }
    for (const [id, until] of absent) if (until <= now) absent.delete(id);
    const every = opts.watchedCheckMs ?? 5000;
    if (opts.watched && now - watchedAt >= every) {
      watchedAt = now;
      void checkWatched();
    }
  }, tickMs);
  tick.unref?.();
  watchedKnown = checkWatched();

  return {
    apply(events) {
      if (stopped) return;
      const { changed, untracked, truncated } = book.apply(events);
      if (truncated) {
        resyncAll('truncate');
        return;
      }
      for (const id of changed) schedule(id);
      // An election somebody receives here but that is not held (it was absent, or its load
      // failed): its events bring it back.
      for (const id of untracked) {
        if ((absent.get(id) ?? 0) > Date.now()) continue;
        if (opts.subscribers(id) > 0) void ensure(id, 'first_use', false).catch(() => undefined);
      }
    },

    joined(id) {
      if (stopped) return undefined;
      if (!book.has(id)) {
        if ((absent.get(id) ?? 0) <= Date.now()) void ensure(id, 'first_use', false).catch(() => undefined);
        return undefined;
      }
      metaOf(id).unwantedSince = undefined;
      if (!book.isLive(id) || !settled(id)) return undefined;
      return book.full(id);
    },

    async snapshot(id) {
      opts.onRequest?.(id);
      // Read your writes: first let the reader reach what is committed now (a few ms at most;
      // a horizon held back by an open transaction holds this back no further than the reader).
      const now = await opts.horizon?.().catch(() => undefined);
      const behind = () => now !== undefined && compare(opts.position() ?? ZERO, now) < 0;
      if (behind()) await opts.delivered(now as Position);
      const at = opts.position();
      if (at && book.isLive(id) && settled(id)) {
        metrics.cacheRequests.inc({ result: 'hit' });
        return book.snapshot(id, at) ?? null;
      }
      metrics.cacheRequests.inc({ result: 'miss' });
      for (let i = 0; i < 5; i++) {
        if (!book.isLive(id)) {
          const ok = await ensure(id, book.has(id) ? 'resync' : 'first_use', true);
          if (!ok) return null;
        }
        if (await settle(id)) {
          const p = opts.position();
          const body = p ? book.snapshot(id, p) : undefined;
          if (body !== undefined) return body;
        }
      }
      throw new Error('the dashboard could not be brought up to date');
    },

    resyncAll,
    held: () => book.size(),

    stop() {
      stopped = true;
      clearInterval(tick);
      for (const m of meta.values()) if (m.timer) clearTimeout(m.timer);
      for (const r of retries.values()) clearTimeout(r.timer);
      meta.clear();
      retries.clear();
    },
  };
}
