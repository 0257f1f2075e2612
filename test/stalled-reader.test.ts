// A reader that stops reading holds up no other reader (sql/014_pages_without_the_lock.sql).
// hub.next_page gives keys under the sequencer's lock, and PostgreSQL commits (and so lets the
// lock go) only once it has sent the whole result: a page larger than the sockets' buffers,
// asked for by a reader that then does not read it (a frozen process, a long GC pause, a lost
// network), kept every other node's hub.sequence() waiting, then failing at its 5 s lock timeout.
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createPool } from '../src/db/pool.ts';
import { type Reader, type ReaderOptions, startReader } from '../src/db/reader.ts';
import { createLogger } from '../src/log.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { waitUntil } from './support/hub.ts';

let db: TestDatabase;
let election: number;
let committee: number;

beforeAll(async () => {
  db = await createTestDatabase('hub_stalled_reader');
  const s = await seed(db.pool, 1, 1);
  election = s.elections[0] as number;
  committee = (s.committees.get(election) as number[])[0] as number;
});

afterAll(async () => {
  await db?.drop();
});

type Stallable = {
  reader: Reader;
  /** Events and frame bytes handed over so far. */
  got: { events: number; bytes: number };
  /** The reader's sockets stop (or start again) taking what the server sends. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
};

/** A started reader on `pool` whose connections' sockets can be paused, as a frozen process would. */
async function stallableReader(pool: pg.Pool, opts: Partial<ReaderOptions> = {}): Promise<Stallable> {
  const sockets: Array<{ pause(): void; resume(): void }> = [];
  pool.on('connect', (c) =>
    sockets.push((c as unknown as { connection: { stream: (typeof sockets)[0] } }).connection.stream),
  );
  const got = { events: 0, bytes: 0 };
  const reader = startReader({
    pool,
    log: createLogger('silent'),
    backstopMs: 60_000,
    onStarted: () => undefined,
    onEvents: (es) => {
      got.events += es.length;
      got.bytes += es.reduce((n, e) => n + e.frame.length, 0);
    },
    ...opts,
  });
  const resume = () => {
    for (const s of sockets) s.resume();
  };
  try {
    await waitUntil(() => reader.position() !== undefined, 10_000, 'the reader to start');
  } catch (err) {
    await reader.stop();
    await pool.end();
    throw err;
  }
  await new Promise((r) => setTimeout(r, 50)); // its first pass done, it waits for a wake-up
  return {
    reader,
    got,
    pause: () => {
      for (const s of sockets) s.pause();
    },
    resume,
    stop: async () => {
      resume();
      await reader.stop();
      await pool.end();
    },
  };
}

it('a reader that stops reading in the middle of a burst holds up no other call: its first page fits the sockets, the rest take no lock', async () => {
  const r = await stallableReader(
    new pg.Pool({ connectionString: db.url, max: 1, application_name: 'stalled-reader' }),
    {
      // Pages as large as the burst: more than any socket buffer takes.
      batchSize: 10_000,
      pageBytes: 64 * 1024 * 1024,
    },
  );
  try {
    // The reader stops reading; then a burst (one statement, 6 MB) and its wake-up.
    r.pause();
    const t0 = (await db.pool.query<{ t: Date }>('SELECT clock_timestamp() AS t')).rows[0]?.t;
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, repeat('x', 2000) || i FROM generate_series(1, 3000) i`,
      [election, committee],
    );
    r.reader.wake();
    // Its page call has run: sent whole (idle) or stuck sending (waiting on ClientWrite).
    await waitUntil(
      async () =>
        (
          await db.pool.query(
            `SELECT 1 FROM pg_stat_activity WHERE application_name = 'stalled-reader' AND state_change > $1
               AND (state = 'idle' OR wait_event = 'ClientWrite')`,
            [t0],
          )
        ).rowCount === 1,
      10_000,
      'the reader’s page call to run',
    );
    // Another node keys a new transaction meanwhile (waiting for the lock would fail after 5 s).
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'after')`, [
      election,
      committee,
    ]);
    const before = BigInt(String((await db.pool.query<{ f: string }>('SELECT hub.sequence()::text AS f')).rows[0]?.f));
    const keyed = await db.pool.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM hub.commits c JOIN hub.outbox o ON o.txid = c.txid WHERE o.data->>'voter_name' = 'after'`,
    );
    expect(keyed.rows[0]?.n).toBe('1');
    expect(before).toBeGreaterThan(0n);
    // Reading again, it gets everything, the burst in pages after the first.
    r.resume();
    r.reader.wake();
    await waitUntil(() => r.got.events === 3001, 30_000, `all 3 001 events (have ${r.got.events})`);
  } finally {
    await r.stop();
  }
}, 60_000);

it('a row larger than any first page at the head of a pass: the server drops the stalled reader within tcp_user_timeout, before another call’s lock timeout, and the reader reads it on a new connection', async () => {
  const r = await stallableReader(createPool(db.url, createLogger('silent'), 1, 'stalled-reader-big-row'));
  try {
    r.pause();
    // 8 MB of JSON in one row: the page that gives its key cannot leave it out (one row always comes).
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, string_agg(md5(i::text), '') FROM generate_series(1, 250000) i`,
      [election, committee],
    );
    r.reader.wake();
    await waitUntil(
      async () =>
        (
          await db.pool.query(
            `SELECT 1 FROM pg_stat_activity WHERE application_name = 'stalled-reader-big-row' AND wait_event = 'ClientWrite'`,
          )
        ).rowCount === 1,
      10_000,
      'the reader’s backend to wait on its client',
    );
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'after big')`, [
      election,
      committee,
    ]);
    // It waits for the lock the stalled call holds: until the server drops that connection
    // (TCP_USER_TIMEOUT_MS), not until its own 5 s lock timeout fails it.
    await db.pool.query('SELECT hub.sequence()');
    r.resume();
    r.reader.wake();
    await waitUntil(() => r.got.bytes > 8_000_000, 30_000, 'the big row, read again on a new connection');
  } finally {
    await r.stop();
  }
}, 60_000);
