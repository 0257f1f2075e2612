import type pg from 'pg';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';
import { type Position, compare } from './cursor.ts';
import { type HubEvent, currentHorizon, decodeRow, readAfter } from './outbox.ts';

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
  onEvents: (events: HubEvent[]) => void;
  onStarted: (p: Position) => void;
  onBadRow?: () => void;
  batchSize?: number;
  /** A page stops before the row that would take its data past this many bytes (one row always comes). */
  pageBytes?: number;
  /** Poll even without a notification: the backstop for lost notifications. */
  backstopMs?: number;
  /** While busy (its last pass read rows), the reader polls again after this many ms, NOTIFY or not. */
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
   * A reader busy this long without a quiet pass, reading at least `awakeAboveRate` rows/s,
   * tells writers to stop notifying (`hub.awake`): it polls anyway. It declares itself asleep
   * again at a quiet pass once the rate is below `sleepBelowRate` (hysteresis: a steady stream
   * does not flip writers between notifying and not).
   */
  awakeAfterMs?: number;
  awakeAboveRate?: number;
  sleepBelowRate?: number;
  /**
   * Tests only: a deliberately broken handshake, to show that the lost-wake-up test catches
   * it. `no-recheck` sleeps right after declaring; `no-inflight-wait` re-reads once but does
   * not wait for the transactions in flight at the declaration.
   */
  unsafeHandshake?: 'no-recheck' | 'no-inflight-wait';
};

/** Longest pause between checks while waiting for transactions in flight at a declaration. */
const SETTLE_MAX_MS = 50;
/** Rows held back this long are re-read every busyPollMs; after that at the held backoff. */
const HELD_FAST_MS = 100;

/** The byte budget of one page of the outbox (the hub holds a page twice: row text and frames). */
export const DEFAULT_PAGE_BYTES = 4 * 1024 * 1024;

/**
 * The outbox reader: NOTIFY only wakes it; it always reads from its own cursor, so a lost
 * notification or a reconnect costs latency, never an event. Starts at the current head
 * (clients resume older positions through `subscribe` with `since`).
 *
 * One loop: a pass reads every page there is. After a pass that read rows the reader is busy
 * and polls again after `busyPollMs` (sooner on a notification). After an empty pass it goes
 * to sleep through the handshake of sql/005_capture.sql: declare (`hub.sleep`), wait until
 * the transactions in flight at the declaration have ended, read once more, and only then
 * sleep until a notification, the backstop, or the lease renewal.
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
  let heldDelay = 0;
  /** Rows (decodable or not) the last page held. */
  let pageRows = 0;
  const waiters = new Set<{ p: Position; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }>();

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

  const readOnce = async (): Promise<boolean> => {
    if (!pos) {
      pos = (await currentHorizon(pool)).horizon;
      opts.onStarted(pos);
    }
    const r = await readAfter(pool, pos, limit, pageBytes);
    pageRows = r.rows.length;
    log.debug({ n: r.rows.length, from: String(pos.txid) + '.' + String(pos.id), horizon: String(r.horizon), held: r.held }, 'outbox read');
    const events: HubEvent[] = [];
    for (const raw of r.rows) {
      const e = decodeRow(raw);
      if (e) {
        events.push(e);
        pos = e.pos;
      } else {
        opts.onBadRow?.();
        log.error({ txid: raw.txid, id: raw.id }, 'malformed outbox row skipped');
        if (typeof raw.txid === 'string' && typeof raw.id === 'string' && /^\d+$/.test(raw.txid) && /^\d+$/.test(raw.id)) {
          pos = { txid: BigInt(raw.txid), id: BigInt(raw.id) };
        }
      }
    }
    const complete = !r.more;
    const cut = r.more && r.rows.length < limit;
    limit = Math.min(batchSize, cut ? r.rows.length + 1 : limit * 2);
    if (complete) {
      // Nothing else below the horizon: the cursor moves up to it even without events.
      const h = { txid: r.horizon, id: 0n };
      if (compare(h, pos) > 0) pos = h;
    }
    if (events.length > 0) opts.onEvents(events);
    // Held rows wait for an older open transaction (possibly in another database of the
    // cluster: the horizon is cluster-wide) that sends no NOTIFY here when it ends; re-read
    // every few ms, at most 10 ms apart, so delivery follows within ~10 ms of that commit.
    heldDelay = r.held ? Math.min(10, Math.max(2, heldDelay * 2)) : 0;
    settle();
    return !complete;
  };

  // ---- the loop: read, then poll again soon (busy) or go to sleep (idle) -------------------

  const busyPollMs = opts.busyPollMs ?? 2;
  const backstopMs = opts.backstopMs ?? 1000;
  const sleep = opts.sleep;
  const leaseMs = sleep?.leaseMs ?? 10_000;
  const awakeAfterMs = sleep?.awakeAfterMs ?? 50;
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
  // `leaseEnd`, on our clock, an under-estimate). `settled`: the handshake completed after the
  // declaration and the lease never lapsed since, so a quiet pass may sleep at once.
  // `pending`: transactions in flight at the declaration that have not ended yet.
  let declared = false;
  let settled = false;
  let pending: string[] = [];
  let leaseEnd = 0;
  let settleDelay = 0;
  let busySince: number | undefined;
  let withdrawn = false; // declaration withdrawn for being busy: re-declare once the rate is low
  let unsupported = false;
  // Rows read per second over the last 100-200 ms: two 100 ms buckets.
  let bucketStart = 0;
  let bucket = 0;
  let lastBucket = 0;
  const countRows = (n: number) => {
    const now = performance.now();
    if (now - bucketStart >= 100) {
      lastBucket = now - bucketStart >= 200 ? 0 : bucket;
      bucket = 0;
      bucketStart = now;
    }
    bucket += n;
    return ((lastBucket + bucket) * 1000) / (100 + (now - bucketStart));
  };

  const renewalDue = () => performance.now() >= leaseEnd - leaseMs / 3;
  const untilRenewal = () => (declared ? Math.max(1, leaseEnd - leaseMs / 3 - performance.now()) : Number.POSITIVE_INFINITY);

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
    log.debug({ reader: id, lapsed: row?.lapsed, pending: row?.pending.length, settled }, 'declared asleep');
    if (!row || row.lapsed || !settled) {
      // Not continuously asleep: writers may have skipped their NOTIFY. Re-read after the
      // transactions in flight have ended.
      settled = sleep?.unsafeHandshake === 'no-recheck';
      pending = sleep?.unsafeHandshake ? [] : (row?.pending ?? []);
      settleDelay = 0;
      return !settled;
    }
    return false;
  };

  const awake = async (id: string) => {
    declared = false;
    settled = false;
    pending = [];
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
    settled = false;
    pending = [];
    const code = (err as { code?: unknown }).code;
    if (code === '42883' || code === '42P01') {
      // Before sql/005_capture.sql: no hub.sleep, and every capture NOTIFYs anyway.
      unsupported = true;
      log.warn({ err: errorMessage(err) }, 'hub.sleep is missing (sql/005_capture.sql not applied): relying on every write to notify');
      return asleepFor(Number.POSITIVE_INFINITY);
    }
    if (Date.now() - protocolWarned > 60_000) {
      protocolWarned = Date.now();
      log.warn({ err: errorMessage(err), pollMs: SETTLE_MAX_MS }, 'declaring the reader asleep failed: polling instead');
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
      if (countRows(0) >= sleepBelowRate) return busyPollMs; // still a dense stream: keep polling
      withdrawn = false;
    }
    try {
      if ((!declared || renewalDue()) && (await declare(sleep.id))) return 0;
      if (settled) return asleepFor(untilRenewal());
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
    settled = true;
    return asleepFor(untilRenewal());
  };

  /** After a pass that read rows (or found rows held back): the reader polls, writers need not notify. */
  const busy = async (rows: number): Promise<void> => {
    const now = performance.now();
    busySince ??= now;
    const rate = countRows(rows);
    if (!sleep || !declared) return;
    try {
      if (now - busySince >= awakeAfterMs && rate >= awakeAboveRate) {
        withdrawn = true;
        await awake(sleep.id);
      } else if (renewalDue()) await declare(sleep.id); // a lapse found here is dealt with at the next quiet pass
    } catch (err) {
      protocolFailed(err);
    }
  };

  /** Reads every page there is; the number of rows read. */
  const pass = async (): Promise<number> => {
    let rows = 0;
    for (;;) {
      const more = await readOnce();
      rows += pageRows;
      if (!more || stopped) return rows;
      // Let sockets drain between pages of a large burst.
      await new Promise((r) => setImmediate(r));
    }
  };

  let heldSince: number | undefined;
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
        const rows = await pass();
        failures = 0;
        failure = undefined;
        if (backstopPass && rows > 0) {
          missed++;
          log.warn({ rows, missed }, 'the backstop poll found rows after a sleep: a wake-up was missed');
        }
        if (rows > 0 || heldDelay > 0) {
          await busy(rows);
          // Rows committed above an older open transaction wait for it, and no NOTIFY says when
          // it ends (none at all once this reader has withdrawn its declaration): the first
          // 100 ms of a hold are polled like a busy stream, a longer one (a long transaction
          // elsewhere in the cluster) at the held backoff.
          const now = performance.now();
          heldSince = heldDelay > 0 ? (heldSince ?? now) : undefined;
          wait = heldSince !== undefined && now - heldSince >= HELD_FAST_MS ? heldDelay : busyPollMs;
        } else {
          heldSince = undefined;
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
        wasAsleep = sleeping && settled; // declared: writers were to notify it
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
      if (sleep && declared) await awake(sleep.id).catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'hub.awake at stop failed'));
    },
  };
}
