import type pg from 'pg';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';
import { FIRST_SEQ, type Position, compare } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import { commitFrontier, decodeRow, readAfter, rowPosition, rowSeq } from './outbox.ts';

export type Reader = {
  /** Everything at or before this position has been handed to `onEvents`; undefined until started. */
  position(): Position | undefined;
  /** Reads the outbox now (coalesced: one read in flight, one queued). */
  wake(): void;
  /** Resolves true once the reader has reached `p`, false after `timeoutMs`. */
  waitFor(p: Position, timeoutMs: number): Promise<boolean>;
  /** The current run of failed reads (since: epoch ms of its first), or undefined after a success. */
  failure(): ReaderFailure | undefined;
  stop(): Promise<void>;
};

export type ReaderFailure = { readonly since: number; readonly count: number; readonly error: string };

export type ReaderOptions = {
  pool: pg.Pool;
  log: Logger;
  /** Called synchronously, in order, for every batch; must not throw. */
  onEvents: (events: OutboxEvent[]) => void;
  onStarted: (p: Position) => void;
  onBadRow?: () => void;
  /** Called after every completed read, with the cursor after it and whether rows are held back. */
  onRead?: (p: Position, held: boolean) => void;
  batchSize?: number;
  /** A page stops before the row that would take its data past this many bytes (one row always comes). */
  pageBytes?: number;
  /** Poll even without a notification: the backstop for lost notifications. */
  backstopMs?: number;
};

/** The byte budget of one page of the outbox (the hub holds a page twice: row text and frames). */
export const DEFAULT_PAGE_BYTES = 4 * 1024 * 1024;

/** A missing commit key (a hole) this old is resolved with the commit frontier (pg_locks)... */
const HOLE_CHECK_MS = 5;
/** ...and again at most this often while it stays (its transaction is still committing). */
const FRONTIER_EVERY_MS = 50;

/**
 * Where the rows of a page may be delivered up to. Rows come in (seq, id) order; `last` is the
 * last key seen (or, before any, the one below the position's). Between two keys a hole is
 * harmless when it is below FIRST_SEQ (the old rows, keyed by their txids, all committed) or
 * below `settled` (aborted: see hub.commit_frontier); otherwise its transaction may still be
 * committing, and nothing after it may go out yet. Returns the first key of the hole that
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
  let polling = false;
  let again = false;
  let stopped = false;
  let failures = 0;
  let failure: ReaderFailure | undefined;
  let heldDelay = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let heldTimer: NodeJS.Timeout | undefined;
  let current: Promise<void> = Promise.resolve();
  const waiters = new Set<{ p: Position; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }>();
  // Every commit key below `settled` has ended: in a read that started after the frontier call
  // that set it, a key below it that is missing aborted (sql/006_commit_order.sql).
  let settled = 0n;
  let frontierAt = 0;
  let wantFrontier = false;
  let hole: { seq: bigint; since: number; checkedAt: number } | undefined;

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

  const frontier = async () => {
    const f = await commitFrontier(pool);
    if (f > settled) settled = f;
    frontierAt = Date.now();
    wantFrontier = false;
  };

  const readOnce = async (): Promise<boolean> => {
    if (!pos) {
      // The head: every key below the frontier is settled, and clients resume older positions
      // through `subscribe` with `since`.
      await frontier();
      pos = { seq: settled, id: 0n };
      opts.onStarted(pos);
    }
    const resolved = wantFrontier;
    if (resolved) await frontier();
    const from: Position = pos;
    const r = await readAfter(pool, from, limit, pageBytes);
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
    const cut = r.more && r.rows.length < limit;
    limit = Math.min(batchSize, cut ? r.rows.length + 1 : limit * 2);
    if (complete) {
      // Everything visible after the position was read: the last key is done, and so is every
      // key below the frontier (missing ones aborted: this read started after the frontier).
      advance({ seq: last + 1n, id: 0n });
      advance({ seq: settled, id: 0n });
    }
    if (events.length > 0) opts.onEvents(events);
    // A hole may be a transaction still committing (key taken, commit record not yet visible):
    // re-read every few ms, at most 10 ms apart. Once it is HOLE_CHECK_MS old, read again at once
    // with the frontier: if its transaction has ended, it aborted and that read skips it; if not,
    // ask again every FRONTIER_EVERY_MS while it stays (a new hole is asked about at once).
    const now = Date.now();
    if (blocked !== undefined) {
      if (hole?.seq !== blocked) hole = { seq: blocked, since: now, checkedAt: 0 };
      if (!resolved && now - hole.since >= HOLE_CHECK_MS && now - hole.checkedAt >= FRONTIER_EVERY_MS) {
        hole.checkedAt = now;
        wantFrontier = true;
        settle();
        return true;
      }
      heldDelay = Math.min(10, Math.max(2, heldDelay * 2));
    } else {
      hole = undefined;
      heldDelay = 0;
    }
    settle();
    // `held`: rows wait behind a key that may still be committing.
    if (pos) opts.onRead?.(pos, blocked !== undefined);
    if (r.more && blocked === undefined) return true;
    // A waiter above a complete read: maybe keys after the last one aborted (nothing later is
    // visible to show the hole). One read with the frontier settles that (at most every
    // FRONTIER_EVERY_MS: until then the read is scheduled, not dropped).
    if (complete && !resolved && pos && [...waiters].some((w) => compare(w.p, pos as Position) > 0)) {
      const wait = FRONTIER_EVERY_MS - (now - frontierAt);
      if (wait <= 0) {
        wantFrontier = true;
        return true;
      }
      heldDelay = Math.max(heldDelay, wait);
    }
    return false;
  };

  const poll = async () => {
    if (stopped) return;
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    try {
      do {
        again = false;
        const more = await readOnce();
        if (more) {
          again = true;
          // Let sockets drain between pages of a large burst.
          await new Promise((r) => setImmediate(r));
        }
      } while (again && !stopped);
      failures = 0;
      failure = undefined;
    } catch (err) {
      failures++;
      failure = { since: failure?.since ?? Date.now(), count: failures, error: errorMessage(err) };
      const delay = Math.min(5000, 50 * 2 ** Math.min(failures, 7)) * (0.5 + Math.random() / 2);
      log.warn({ err: errorMessage(err), retryInMs: Math.round(delay) }, 'outbox read failed');
      clearTimeout(retryTimer);
      retryTimer = setTimeout(wake, delay);
    } finally {
      polling = false;
    }
    // Rows after a hole wait for its transaction to finish committing; no NOTIFY says when.
    if (heldDelay > 0 && !stopped) {
      clearTimeout(heldTimer);
      heldTimer = setTimeout(wake, heldDelay);
    }
  };

  function wake() {
    if (stopped) return;
    current = poll();
  }

  const backstop = setInterval(wake, opts.backstopMs ?? 1000);
  wake();

  return {
    position: () => pos,
    wake,
    failure: () => failure,
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
      clearTimeout(retryTimer);
      clearTimeout(heldTimer);
      for (const w of waiters) {
        clearTimeout(w.timer);
        w.resolve(false);
      }
      waiters.clear();
      await current;
    },
  };
}
