// Shutdown contracts: every step of a stop is bounded by SHUTDOWN_TIMEOUT, a step that fails or
// hangs is reported (stop() rejects, `serve` exits 1) and the steps after it still run.
// A hang is made real: the outbox is locked, so the reader's and housekeeping's queries wait.
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './support/db.ts';
import { startTestHub, waitUntil } from './support/hub.ts';
import { spawnHub } from './support/hub-process.ts';
import { SECRET } from './support/hub.ts';

let db: TestDatabase;
let locker: pg.PoolClient | undefined;

beforeAll(async () => {
  db = await createTestDatabase('hub_shutdown');
});
afterAll(async () => db?.drop());

afterEach(async () => {
  await unlock();
  // The steps given up on finish once the lock is gone: the hub's connections end after all.
  await waitUntil(
    async () => (await hubConnections()) === 0,
    20_000,
    'the hub connections to end after the lock is released',
  );
});

const hubConnections = async () =>
  (
    await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'election-hub%'`,
    )
  ).rows[0]?.n ?? 0;

/** Locks the outbox until `unlock`, and resolves once a hub query waits for that lock. */
async function lockOutboxUntilAHubQueryWaits(): Promise<void> {
  locker = await db.pool.connect();
  await locker.query('BEGIN');
  await locker.query('LOCK TABLE hub.outbox IN ACCESS EXCLUSIVE MODE');
  // The reader polls the outbox at least every second (its backstop), so one query soon waits.
  await waitUntil(
    async () =>
      (
        await db.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.relation = 'hub.outbox'::regclass AND NOT l.granted AND a.application_name = 'election-hub'`,
        )
      ).rows[0]?.n !== 0,
    20_000,
    'a hub query waiting for the outbox lock',
  );
}

async function unlock(): Promise<void> {
  const c = locker;
  locker = undefined;
  if (!c) return;
  await c.query('ROLLBACK');
  c.release();
}

describe('stop()', () => {
  it('rejects with an AggregateError naming the steps that hung past SHUTDOWN_TIMEOUT; the steps after them still ran', async () => {
    const hub = await startTestHub(db.url, { SHUTDOWN_TIMEOUT: '300ms' });
    await lockOutboxUntilAHubQueryWaits();
    const err = await hub.stop().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AggregateError);
    const failed = (err as AggregateError).errors as Array<{ step: string; message: string }>;
    // The pool waits for its busy client (the reader's read or housekeeping's prune, on the lock).
    expect(failed.map((f) => f.step)).toContain('pool');
    for (const f of failed) expect(f.message).toBe(`shutdown step "${f.step}" did not finish within 300 ms`);
    // Later steps ran: the public port and the metrics listener (the last step) are closed.
    await expect(fetch(`${hub.url}/health`)).rejects.toThrow();
    await expect(fetch(`${hub.metricsUrl}/metrics`)).rejects.toThrow();
    // The same outcome for every caller.
    await expect(hub.stop()).rejects.toBe(err);
  }, 60_000);

  it('resolves when every step finished in time', async () => {
    const hub = await startTestHub(db.url, { SHUTDOWN_TIMEOUT: '10s' });
    await expect(hub.stop()).resolves.toBeUndefined();
  }, 60_000);
});

describe('election-hub serve on SIGTERM', () => {
  const env = () => ({ DATABASE_URL: db.url, JWT_SECRET: SECRET, SHUTDOWN_TIMEOUT: '300ms' });

  it('exits 0 after an orderly stop', async () => {
    const p = await spawnHub(env());
    expect(await p.stop('SIGTERM')).toBe(0);
  }, 60_000);

  it('exits 1, naming the steps, when a step hangs past SHUTDOWN_TIMEOUT', async () => {
    const p = await spawnHub(env());
    await lockOutboxUntilAHubQueryWaits();
    expect(await p.stop('SIGTERM')).toBe(1);
    const failed = p.lines.find((l) => l.includes('shutdown failed'));
    expect(failed).toMatch(/shutdown step \\"pool\\" did not finish within 300 ms/);
  }, 60_000);
});
