import type pg from 'pg';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';
import { type Position, compare } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import { currentHorizon, decodeRow, readAfter } from './outbox.ts';

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
    log.debug({ n: r.rows.length, from: String(pos.txid) + '.' + String(pos.id), horizon: String(r.horizon), held: r.held }, 'outbox read');
    const events: OutboxEvent[] = [];
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
    opts.onRead?.(pos, r.held);
    return !complete;
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
    // Rows committed above an older open transaction wait for it; no NOTIFY says when it ends.
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
