import type pg from 'pg';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';
import { FIRST_SEQ, type LostRange, type Position, compare, epochOf, lostRangeOf } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import { decodeRow, lostKeys, readAfter, readPage, rowPosition, rowSeq, sequenceCommits } from './outbox.ts';

export type Reader = {
  /** Everything at or before this position has been handed to `onEvents`; undefined until started. */
  position(): Position | undefined;
  /** Reads the outbox now (coalesced: one read in flight, one queued). */
  wake(): void;
  /** Resolves true once the reader has reached `p`, false after `timeoutMs`. */
  waitFor(p: Position, timeoutMs: number): Promise<boolean>;
  /** The current run of failed reads (since: epoch ms of its first), or undefined after a success. */
  failure(): ReaderFailure | undefined;
  /** True while it waits for a notification only (or the backstop, or its lease renewal): asleep. */
  asleep(): boolean;
  stop(): Promise<void>;
};

export type ReaderFailure = { readonly since: number; readonly count: number; readonly error: string };

export type ReaderOptions = {
  pool: pg.Pool;
  log: Logger;
  /** Called synchronously, in order, for every batch; must not throw. */
  onEvents: (events: OutboxEvent[]) => void;
  onStarted: (p: Position) => void;
  /**
   * The key ranges PostgreSQL's restarts took back (sql/012_async_keys_and_restarts.sql): called
   * before `onStarted`, and again whenever a frontier shows a new epoch. `restart` is set when
   * this reader's own position was in one of them: it now stands at `restart` (the first key
   * after that range), and what it handed out from the lost keys no longer exists. Called
   * synchronously before any event read after it; must not throw.
   */
  onLost?: (lost: readonly LostRange[], restart: Position | undefined) => void;
  onBadRow?: () => void;
  /** Called after every completed read, with the cursor after it and whether rows are held back. */
  onRead?: (p: Position, held: boolean) => void;
  batchSize?: number;
  /** A page stops before the row that would take its data past this many bytes (one row always comes). */
  pageBytes?: number;
  /** Poll even without a notification: the backstop for lost notifications. */
  backstopMs?: number;
  /** While busy (its last pass read rows or waits on a gap), the reader polls again after this many ms, NOTIFY or not. */
  busyPollMs?: number;
  /**
   * Wake-ups: when idle, the reader declares itself asleep (`hub.sleep`, sql/005_capture.sql)
   * so that writers NOTIFY; writers send nothing while every reader is busy. Without it the
   * reader waits for a notification or the backstop, as it did before 005.
   */
  sleep?: SleepOptions;
};

export type SleepOptions = {
  /** True only while the listener's LISTEN is in effect: a reader never sleeps on a deaf listener. */
  listening: () => boolean;
  /** This reader's name in `hub.sleepers`, unique per process. */
  id: string;
  /** How long a declaration lasts unless renewed (renewed every third of it). */
  leaseMs?: number;
  /**
   * When a declared reader tells writers to stop notifying (`hub.awake`) and polls every
   * `busyPollMs` instead, and when it declares itself asleep again. Either of two rules
   * withdraws the declaration:
   * - what the NOTIFYs cost the writers: it read at least `awakeAboveCommits` commits per
   *   second over the last `awakeAfterMs` (quiet passes in between or not), and writers are
   *   queued for PostgreSQL's NOTIFY lock (taken by every transaction that notified and held
   *   through its commit): half a backend waiting on average over the last 8 samples of that
   *   lock's queue (one every 25 ms while the rate lasts; with `withdrawWhenQueued` false the
   *   rate alone decides). While the reader is declared every commit sends a NOTIFY and wakes
   *   it; at 200/s it reads about as often as polling every 2 ms would (the wake-up's read,
   *   then the busy poll 2 ms later). Writers that the NOTIFYs do not hold up (a paced stream)
   *   keep their wake-ups: a woken reader delivers ~1 ms sooner than a polling one;
   * - rows: it was busy `awakeAfterMs` without a quiet pass, reading at least `awakeAboveRate`
   *   rows/s (a stream of large transactions).
   * It declares itself asleep again at a quiet pass once it reads fewer than `sleepBelowCommits`
   * commits/s and `sleepBelowRate` rows/s (over the last 200 ms). Hysteresis: a steady stream does
   * not flip writers between notifying and not; once the NOTIFYs stop, writers that were queued
   * for their lock commit faster, not slower.
   */
  awakeAfterMs?: number;
  awakeAboveCommits?: number;
  sleepBelowCommits?: number;
  withdrawWhenQueued?: boolean;
  awakeAboveRate?: number;
  sleepBelowRate?: number;
  /**
   * Tests only: a deliberately broken handshake, to show that the lost-wake-up test catches
   * it. `no-recheck` sleeps right after declaring; `no-inflight-wait` re-reads once but does
   * not wait for the transactions in flight at the declaration.
   */
  unsafeHandshake?: 'no-recheck' | 'no-inflight-wait';
};

/** The window of the rates a withdrawn reader re-declares by (and of the rows rule). */
const RATE_WINDOW_MS = 200;
/**
 * While a declared reader reads many commits it samples the NOTIFY lock's queue every
 * QUEUE_SAMPLE_MS, and weighs the last QUEUE_SAMPLES samples (200 ms): writers are held up when
 * on average at least half a backend waited (4 flat-out writers: 1.9-2.1 waiting on average;
 * 4 connections paced at 1 000 commits/s: 0.03-0.05; see docs/BENCHMARKS.md).
 */
const QUEUE_SAMPLE_MS = 25;
const QUEUE_SAMPLES = 8;
const QUEUE_MEAN_WAITING = 0.5;
/**
 * Backends waiting for the lock PostgreSQL takes in the pre-commit of a transaction that sent a
 * NOTIFY and holds until that commit is done (async.c, PreCommit_Notify: LockSharedObject on
 * pg_database, object 0, cluster-wide). pg_locks is readable by every role.
 */
export const NOTIFY_QUEUE_SQL = `SELECT count(*)::int AS waiting FROM pg_locks
  WHERE locktype = 'object' AND database = 0 AND classid = 'pg_database'::regclass AND objid = 0 AND NOT granted`;
/** Longest pause between checks while waiting for transactions in flight at a declaration. */
const SETTLE_MAX_MS = 50;

/** The byte budget of one page of the outbox (the hub holds a page twice: row text and frames). */
export const DEFAULT_PAGE_BYTES = 4 * 1024 * 1024;

/**
 * The first page of a pass gives keys (hub.next_page) and so holds the sequencer's lock until
 * PostgreSQL has sent it: it is kept within what the sockets' buffers take whole, so that a
 * reader that stops reading holds up no other (sql/014_pages_without_the_lock.sql). Its
 * further pages (hub.read_page) take no lock and have the full budget.
 */
export const FIRST_PAGE_BYTES = 16 * 1024;
const FIRST_PAGE_ROWS = 64;

/**
 * Where the rows of a page may be delivered up to. Rows come in (seq, id) order; `last` is the
 * last key seen (or, before any, the one below the position's). Between two keys a hole is
 * harmless when it is below FIRST_SEQ (the old rows, keyed by their txids, all committed) or
 * below `settled`, the frontier hub.sequence returned before the read (every key below it has
 * committed: a missing one is an aborted transaction's key from sql/006_commit_order.sql, or
 * pruned). Keys are given without holes since sql/009_sequencer.sql, so a hole above it would
 * be a bug or a foreign row: nothing after it goes out. Returns the first key of the hole that
 * blocks row `q`, or undefined.
 */
export function holeBefore(last: bigint, q: bigint, settled: bigint): bigint | undefined {
  if (q <= last + 1n) return undefined;
  let lo = last + 1n;
  if (lo < FIRST_SEQ) lo = FIRST_SEQ;
  if (lo < settled) lo = settled;
  return lo < q ? lo : undefined;
}

/**
 * The outbox reader: NOTIFY only wakes it; it always reads from its own cursor, so a lost
 * notification or a reconnect costs latency, never an event. Starts at the current head
 * (clients resume older positions through `subscribe` with `since`).
 *
 * One loop: a pass reads every page there is, each page in one call that first gives keys to
 * what has committed (hub.next_page: sql/009_sequencer.sql, sql/011_sequence_and_read.sql).
 * After a pass that read rows (or stopped at a gap) the reader is busy and polls again after
 * `busyPollMs` (sooner on a notification). After an empty pass it goes to sleep through the
 * handshake of sql/005_capture.sql: declare (`hub.sleep`), wait until the transactions in
 * flight at the declaration have ended, read once more, and only then sleep until a
 * notification, the backstop, or the lease renewal.
 */
export function startReader(opts: ReaderOptions): Reader {
  const { pool, log } = opts;
  const batchSize = opts.batchSize ?? 1000;
  const pageBytes = opts.pageBytes ?? DEFAULT_PAGE_BYTES;
  // Rows asked for per page: a page cut by its byte budget had the sizes of rows it did not
  // take computed (for a compressed value that means decompressing it), so after such a page
  // ask for one row more than fitted; double again while pages stop at the row limit.
  let limit = batchSize;
  let pos: Position | undefined;
  let stopped = false;
  let failures = 0;
  let failure: ReaderFailure | undefined;
  /** Rows (decodable or not) the last page held, and the commit keys it completed or began. */
  let pageRows = 0;
  let pageCommits = 0;
  /** The last page stopped at a gap: rows wait behind a missing key. */
  let gap = false;
  const waiters = new Set<{ p: Position; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }>();
  // Every commit key below `settled` has committed: hub.sequence returned it before this read.
  let settled = 0n;
  // The epoch of the last frontier (sql/012).
  let epoch = -1n;

  const settle = () => {
    if (!pos) return;
    for (const w of waiters) {
      if (compare(pos, w.p) >= 0) {
        clearTimeout(w.timer);
        waiters.delete(w);
        w.resolve(true);
      }
    }
  };

  const advance = (p: Position) => {
    if (!pos || compare(p, pos) > 0) pos = p;
  };

  /** One page: the pass's first (`first`: keys given, hub.next_page) or a further one (hub.read_page). */
  const readOnce = async (first: boolean): Promise<boolean> => {
    if (!pos) {
      // The head: clients resume older positions through `subscribe` with `since`.
      const head = await sequenceCommits(pool);
      const lost = await lostKeys(pool);
      settled = head;
      epoch = epochOf(head);
      pos = { seq: head, id: 0n };
      opts.onLost?.(lost, undefined);
      opts.onStarted(pos);
    }
    const from: Position = pos;
    // Keys for what has committed since the last call (any node's), then the read, in one call:
    // a pass reads every transaction that had committed when it started (sql/009_sequencer.sql,
    // sql/011_sequence_and_read.sql). Its further pages read those keys without the lock (014).
    const r = first
      ? await readAfter(pool, from, Math.min(limit, FIRST_PAGE_ROWS), Math.min(pageBytes, FIRST_PAGE_BYTES))
      : { ...(await readPage(pool, from, limit, pageBytes)), frontier: settled };
    if (r.frontier > settled) settled = r.frontier;
    if (epochOf(r.frontier) > epoch) {
      // A new epoch: PostgreSQL restarted, and the keys above what it kept may be lost
      // (sql/012_async_keys_and_restarts.sql). If this reader stood in them, it starts again
      // after them (and reads again from there) before any event of the new epoch goes out.
      const lost = await lostKeys(pool);
      epoch = epochOf(r.frontier);
      const hit = lostRangeOf(from, lost);
      if (hit) {
        pos = { seq: hit.to, id: 0n };
        log.warn(
          { from: String(hit.from), to: String(hit.to), position: `${from.seq}.${from.id}` },
          'PostgreSQL restarted and took back keys this reader had read: starting again after them',
        );
        opts.onLost?.(lost, pos);
        pageRows = 0;
        pageCommits = 0;
        gap = false;
        settle();
        return true;
      }
      opts.onLost?.(lost, undefined);
    }
    pageRows = r.rows.length;
    pageCommits = 0;
    const events: OutboxEvent[] = [];
    let last = from.id > 0n ? from.seq : from.seq - 1n;
    let blocked: bigint | undefined;
    for (const raw of r.rows) {
      const q = rowSeq(raw);
      if (q === undefined) {
        // Not from our query (the key is a bigint): stop rather than guess where this page is.
        blocked = last + 1n;
        break;
      }
      blocked = q > last ? holeBefore(last, q, settled) : undefined;
      if (blocked !== undefined) break;
      if (q > last) pageCommits++; // a key's first row here (a key continued from `from` is not new)
      last = q;
      if (raw.id == null) {
        // The key's transaction left nothing (more) to read: the key is done.
        advance({ seq: q + 1n, id: 0n });
        continue;
      }
      const e = decodeRow(raw);
      if (e) {
        events.push(e);
        advance(e.pos);
      } else {
        opts.onBadRow?.();
        log.error({ seq: raw.seq, id: raw.id }, 'malformed outbox row skipped');
        const p = rowPosition(raw);
        if (p) advance(p);
      }
    }
    log.debug(
      { n: r.rows.length, from: `${from.seq}.${from.id}`, blocked: blocked === undefined ? null : String(blocked) },
      'outbox read',
    );
    const complete = !r.more && blocked === undefined;
    if (!first) {
      const cut = r.more && r.rows.length < limit;
      limit = Math.min(batchSize, cut ? r.rows.length + 1 : limit * 2);
    }
    if (complete) {
      // Everything visible after the position was read: the last key is done, and so is every
      // key below the frontier (this read started after it was returned).
      advance({ seq: last + 1n, id: 0n });
      advance({ seq: settled, id: 0n });
    }
    if (events.length > 0) opts.onEvents(events);
    // Rows held behind a hole (see holeBefore) are re-read like a busy stream.
    gap = blocked !== undefined;
    settle();
    // `held`: rows wait behind a key that is missing.
    if (pos) opts.onRead?.(pos, gap);
    return r.more && !gap;
  };

  // ---- the loop: read, then poll again soon (busy) or go to sleep (idle) -------------------

  const busyPollMs = opts.busyPollMs ?? 2;
  const backstopMs = opts.backstopMs ?? 1000;
  const sleep = opts.sleep;
  const leaseMs = sleep?.leaseMs ?? 10_000;
  const awakeAfterMs = sleep?.awakeAfterMs ?? 50;
  const awakeAboveCommits = sleep?.awakeAboveCommits ?? 200;
  const sleepBelowCommits = sleep?.sleepBelowCommits ?? 100;
  const withdrawWhenQueued = sleep?.withdrawWhenQueued ?? true;
  const awakeAboveRate = sleep?.awakeAboveRate ?? 1000;
  const sleepBelowRate = sleep?.sleepBelowRate ?? 500;

  // A wake() while a pass runs makes the next pause return at once: one read in flight, one queued.
  let woken = true;
  let resume: (() => void) | undefined;
  function wake() {
    if (stopped) return;
    byBackstop = false; // a notification (or a waiter) woke it; the backstop sets it after this call
    woken = true;
    resume?.();
  }
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      if (woken || stopped) return resolve();
      const timer = Number.isFinite(ms) ? setTimeout(done, Math.max(0, ms)) : undefined;
      function done() {
        clearTimeout(timer);
        if (resume === done) resume = undefined;
        resolve();
      }
      resume = done;
    });

  // Sleep state (sql/005_capture.sql). `declared`: our lease in hub.sleepers is live (until
  // `leaseEnd`, on our clock, an under-estimate). `asleepSettled`: the handshake completed after the
  // declaration and the lease never lapsed since, so a quiet pass may sleep at once.
  // `pending`: transactions in flight at the declaration that have not ended yet.
  let declared = false;
  let asleepSettled = false;
  let pending: string[] = [];
  let leaseEnd = 0;
  let settleDelay = 0;
  let busySince: number | undefined;
  let withdrawn = false; // declaration withdrawn for being busy: re-declare once the rate is low
  let unsupported = false;
  // What the passes of the last RATE_WINDOW_MS (or awakeAfterMs, if longer) read: one entry per
  // pass that read anything (its end time, rows, commit keys), oldest first.
  const windowMs = Math.max(RATE_WINDOW_MS, awakeAfterMs);
  const recent: Array<{ at: number; rows: number; commits: number }> = [];
  const record = (now: number, rows: number, commits: number) => {
    if (rows > 0 || commits > 0) recent.push({ at: now, rows, commits });
    let old = 0;
    while (old < recent.length && (recent[old]?.at ?? now) <= now - windowMs) old++;
    if (old > 0) recent.splice(0, old);
  };
  // Samples of the NOTIFY lock's queue (time, writers waiting), newest last; only while declared.
  const queue: Array<{ at: number; waiting: number }> = [];
  /** Writers are held up by the NOTIFYs: on average QUEUE_MEAN_WAITING of them queued for their lock (missing samples count as none). */
  const writersQueued = async (now: number): Promise<boolean> => {
    while (queue.length > 0 && (queue[0]?.at ?? now) <= now - 2 * QUEUE_SAMPLES * QUEUE_SAMPLE_MS) queue.shift();
    const lastAt = queue[queue.length - 1]?.at;
    if (lastAt === undefined || now - lastAt >= QUEUE_SAMPLE_MS) {
      const res = await pool.query<{ waiting: number }>({ name: 'hub_notify_queue', text: NOTIFY_QUEUE_SQL });
      queue.push({ at: now, waiting: res.rows[0]?.waiting ?? 0 });
      if (queue.length > QUEUE_SAMPLES) queue.shift();
    }
    let waiting = 0;
    for (const q of queue) waiting += q.waiting;
    return waiting >= QUEUE_MEAN_WAITING * QUEUE_SAMPLES;
  };
  /** Rows or commits read per second over the last `ms` (at least 1). */
  const perSecond = (what: 'rows' | 'commits', ms: number, now = performance.now()) => {
    const span = Math.max(1, ms);
    let n = 0;
    for (const e of recent) if (e.at > now - span) n += e[what];
    return (n * 1000) / span;
  };

  const renewalDue = () => performance.now() >= leaseEnd - leaseMs / 3;
  const untilRenewal = () =>
    declared ? Math.max(1, leaseEnd - leaseMs / 3 - performance.now()) : Number.POSITIVE_INFINITY;

  const declare = async (id: string) => {
    const sent = performance.now();
    const res = await pool.query<{ lapsed: boolean; pending: string[] }>({
      name: 'hub_sleep',
      text: 'SELECT lapsed, pending::text[] AS pending FROM hub.sleep($1, $2)',
      values: [id, leaseMs],
    });
    const row = res.rows[0];
    declared = true;
    leaseEnd = sent + leaseMs;
    log.debug({ reader: id, lapsed: row?.lapsed, pending: row?.pending.length, asleepSettled }, 'declared asleep');
    if (!row || row.lapsed || !asleepSettled) {
      // Not continuously asleep: writers may have skipped their NOTIFY. Re-read after the
      // transactions in flight have ended.
      asleepSettled = sleep?.unsafeHandshake === 'no-recheck';
      pending = sleep?.unsafeHandshake ? [] : (row?.pending ?? []);
      settleDelay = 0;
      return !asleepSettled;
    }
    return false;
  };

  const awake = async (id: string) => {
    declared = false;
    asleepSettled = false;
    pending = [];
    queue.length = 0;
    await pool.query({ name: 'hub_awake', text: 'SELECT hub.awake($1)', values: [id] });
    log.debug({ reader: id }, 'declared awake');
  };

  const stillRunning = async (xids: string[]) =>
    (
      await pool.query<{ x: string }>({
        name: 'hub_still_running',
        text: 'SELECT x::text AS x FROM unnest($1::text[]::xid8[]) x WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot())',
        values: [xids],
      })
    ).rows.map((r) => r.x);

  // A failing sleep protocol must not stop the reading (nor count as a failing read for /ready):
  // the reader then polls every SETTLE_MAX_MS, since writers may not notify it.
  let protocolWarned = 0;
  const protocolFailed = (err: unknown): number => {
    declared = false;
    asleepSettled = false;
    pending = [];
    const code = (err as { code?: unknown }).code;
    if (code === '42883' || code === '42P01') {
      // Before sql/005_capture.sql: no hub.sleep, and every capture NOTIFYs anyway.
      unsupported = true;
      log.warn(
        { err: errorMessage(err) },
        'hub.sleep is missing (sql/005_capture.sql not applied): relying on every write to notify',
      );
      return asleepFor(Number.POSITIVE_INFINITY);
    }
    if (Date.now() - protocolWarned > 60_000) {
      protocolWarned = Date.now();
      log.warn(
        { err: errorMessage(err), pollMs: SETTLE_MAX_MS },
        'declaring the reader asleep failed: polling instead',
      );
    }
    return SETTLE_MAX_MS;
  };

  /** After a quiet pass: how long to wait before the next pass (0: read again now); `sleeps` says whether that wait is sleep. */
  let sleeps = false;
  const asleepFor = (ms: number) => {
    sleeps = true;
    return ms;
  };
  const idle = async (): Promise<number> => {
    busySince = undefined;
    sleeps = false;
    // Not listening (or no hub.sleep): a notification or the backstop wakes it, as before 005.
    if (!sleep || unsupported || !sleep.listening()) return asleepFor(Number.POSITIVE_INFINITY);
    if (withdrawn && !declared) {
      // Still a dense stream (of commits or of rows): keep polling.
      const now = performance.now();
      record(now, 0, 0);
      if (
        perSecond('commits', RATE_WINDOW_MS, now) >= sleepBelowCommits ||
        perSecond('rows', RATE_WINDOW_MS, now) >= sleepBelowRate
      )
        return busyPollMs;
      withdrawn = false;
    }
    try {
      if ((!declared || renewalDue()) && (await declare(sleep.id))) return 0;
      if (asleepSettled) return asleepFor(untilRenewal());
      if (pending.length > 0) {
        const still = await stillRunning(pending);
        const ended = still.length < pending.length;
        pending = still;
        if (ended) return 0; // their rows are visible now: read them
        settleDelay = Math.min(SETTLE_MAX_MS, Math.max(1, settleDelay * 2));
        return settleDelay;
      }
    } catch (err) {
      return protocolFailed(err);
    }
    // Declared, nothing in flight from before, and this quiet pass came after both: asleep.
    asleepSettled = true;
    return asleepFor(untilRenewal());
  };

  /** After a pass that read rows (or found rows held back): the reader polls, writers need not notify. */
  const busy = async (rows: number, commits: number): Promise<void> => {
    const now = performance.now();
    busySince ??= now;
    record(now, rows, commits);
    if (!sleep || !declared) return;
    try {
      const rowsRule = now - busySince >= awakeAfterMs && perSecond('rows', RATE_WINDOW_MS, now) >= awakeAboveRate;
      const commitRate = perSecond('commits', awakeAfterMs, now);
      if (rowsRule || (commitRate >= awakeAboveCommits && (!withdrawWhenQueued || (await queued(now))))) {
        log.debug(
          { reader: sleep.id, rule: rowsRule ? 'rows' : 'commits', commitsPerSecond: Math.round(commitRate) },
          'withdrawing the sleep declaration',
        );
        withdrawn = true;
        await awake(sleep.id);
      } else if (renewalDue()) await declare(sleep.id); // a lapse found here is dealt with at the next quiet pass
    } catch (err) {
      protocolFailed(err);
    }
  };
  /** writersQueued, or true (the rate alone decides) when pg_locks cannot be read. */
  let queueWarned = false;
  const queued = async (now: number) => {
    try {
      return await writersQueued(now);
    } catch (err) {
      if (!queueWarned) {
        queueWarned = true;
        log.warn(
          { err: errorMessage(err) },
          'reading the NOTIFY lock queue failed: withdrawing by the commit rate alone',
        );
      }
      return true;
    }
  };

  /** Reads every page there is; the rows and the commit keys read. */
  const pass = async (): Promise<{ rows: number; commits: number }> => {
    let rows = 0;
    let commits = 0;
    for (let first = true; ; first = false) {
      const more = await readOnce(first);
      rows += pageRows;
      commits += pageCommits;
      if (!more || stopped) return { rows, commits };
      // Let sockets drain between pages of a large burst.
      await new Promise((r) => setImmediate(r));
    }
  };

  let sleeping = false;
  // Set by the backstop timer: a pass it starts that finds rows after a sleep found a missed
  // wake-up (a notification lost with a dying listener connection, or a bug): logged, counted.
  let byBackstop = false;
  let wasAsleep = false;
  let missed = 0;
  const run = async () => {
    while (!stopped) {
      woken = false;
      const backstopPass = byBackstop && wasAsleep;
      byBackstop = false;
      let wait: number;
      let quiet = false;
      try {
        const { rows, commits } = await pass();
        failures = 0;
        failure = undefined;
        if (backstopPass && rows > 0) {
          missed++;
          log.warn({ rows, missed }, 'the backstop poll found rows after a sleep: a wake-up was missed');
        }
        if (rows > 0 || gap) {
          await busy(rows, commits);
          wait = busyPollMs;
        } else {
          wait = await idle();
          quiet = sleeps;
        }
      } catch (err) {
        failures++;
        failure = { since: failure?.since ?? Date.now(), count: failures, error: errorMessage(err) };
        wait = Math.min(5000, 50 * 2 ** Math.min(failures, 7)) * (0.5 + Math.random() / 2);
        log.warn({ err: errorMessage(err), retryInMs: Math.round(wait) }, 'outbox read failed');
      }
      wasAsleep = false;
      if (wait > 0) {
        sleeping = quiet;
        await pause(wait);
        wasAsleep = sleeping && asleepSettled; // declared: writers were to notify it
        sleeping = false;
      }
    }
  };

  const backstop = setInterval(() => {
    if (stopped || woken) return;
    const ending = resume !== undefined; // it ends a pause, not a pass
    wake();
    byBackstop = ending;
  }, backstopMs);
  const current = run();

  return {
    position: () => pos,
    wake,
    failure: () => failure,
    asleep: () => sleeping && !woken,
    waitFor(p, timeoutMs) {
      if (pos && compare(pos, p) >= 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const w = {
          p,
          resolve,
          timer: setTimeout(() => {
            waiters.delete(w);
            resolve(false);
          }, timeoutMs),
        };
        waiters.add(w);
        wake();
      });
    },
    async stop() {
      stopped = true;
      clearInterval(backstop);
      resume?.();
      for (const w of waiters) {
        clearTimeout(w.timer);
        w.resolve(false);
      }
      waiters.clear();
      await current;
      // Writers stop notifying for this reader now rather than when its lease ends.
      if (sleep && declared)
        await awake(sleep.id).catch((err: unknown) =>
          log.debug({ err: errorMessage(err) }, 'hub.awake at stop failed'),
        );
    },
  };
}
