import pg from 'pg';
import type { Logger } from '../log.ts';

// bigint columns (ids, counts) as JSON wants them: a number when it is a safe integer, else
// the exact decimal string (an id of 2^53 or more must never be rounded into another id).
// Code that needs ids as text (the outbox reader) selects them `::text`.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => {
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : v;
});

/** How long the server waits for this hub to take data it sent before it drops the connection. */
export const TCP_USER_TIMEOUT_MS = 4000;

/**
 * A pool whose idle-client errors (server restart, pg_terminate_backend) are logged, not fatal.
 * The hub has two: the reader's and delivery's, and a small one for dashboard snapshots.
 */
export function createPool(connectionString: string, log: Logger, max = 10, name = 'election-hub'): pg.Pool {
  // jit=off: the hub's queries are short, and a prepared statement's generic plan can be
  // estimated costly enough for PostgreSQL to JIT-compile it on every run (measured: 9 ms of a
  // 9 ms outbox read, sql/006_commit_order.sql's join with stale statistics).
  // tcp_user_timeout: the server drops a connection whose data this hub has not taken for that
  // long (its process frozen, its network gone). A call that gives keys holds the sequencer's
  // lock until PostgreSQL has sent its whole result (sql/014_pages_without_the_lock.sql), and
  // every other node's call waits for it up to its 5 s lock timeout: this ends the wait first.
  // (Ignored over a Unix socket.)
  const pool = new pg.Pool({
    connectionString,
    max,
    connectionTimeoutMillis: 5000,
    idleTimeoutMillis: 30_000,
    application_name: name,
    options: `-c jit=off -c tcp_user_timeout=${TCP_USER_TIMEOUT_MS}`,
  });
  pool.on('error', (err) => log.warn({ err: err.message }, 'idle database connection failed'));
  return pool;
}
