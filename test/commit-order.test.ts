import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APP_CHECKS_SQL, createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  type Frame,
  type TestClient,
  connect,
  eventsReceived,
  sequenced,
  startTestHub,
  token,
  waitUntil,
} from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { ZERO, compare, decodeCursor, encodeCursor } from '../src/events/position.ts';
import { migrate } from '../src/db/migrate.ts';
import { computeSnapshot } from '../src/db/snapshot.ts';
import { prune, prunedPosition, readAfter, readPage } from '../src/db/outbox.ts';

/*
 * Order without the cluster-wide horizon (issue 14 item 3, sql/006_commit_order.sql and
 * sql/009_sequencer.sql), from outside: transactions that are open elsewhere delay nothing; a
 * transaction that writes the outbox takes its place in the order once it has committed (the
 * next hub.sequence call gives it its key); aborted ones get none. "Arrive" below means "arrive while the holder is still open": the
 * holders stay open until the rows are there (or the deadline fails the test).
 */

let db: TestDatabase;
let other: TestDatabase;
let hub: Hub;
let admin: string;
let e1: number;
let c1: number;
const holders: pg.Client[] = [];

beforeAll(async () => {
  db = await createTestDatabase('hub_order');
  other = await createTestDatabase('hub_order_other', { schema: 'none' });
  await other.pool.query('CREATE TABLE imports (id serial PRIMARY KEY, payload text)');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
  await db.pool.query(`CREATE TABLE scratch (id serial PRIMARY KEY, note text)`);
  // The application's own deferred constraint: fails or takes its time at COMMIT.
  await db.pool.query(APP_CHECKS_SQL);
  hub = await startTestHub(db.url);
  admin = await token({ sub: 'order-admin', role: 'admin' });
});
afterAll(async () => {
  for (const h of holders) await h.end().catch(() => undefined);
  await hub?.stop();
  await db?.drop();
  await other?.drop();
});

const holder = async (url: string) => {
  const c = new pg.Client({ connectionString: url, application_name: 'order-test-holder' });
  c.on('error', () => undefined);
  await c.connect();
  holders.push(c);
  return c;
};
/**
 * A transaction that writes `sql`, then commits with an application check that sleeps `sleepMs`
 * at COMMIT (its rows captured, the transaction still in flight): resolves once it sleeps, with
 * the COMMIT's promise (wrapped: an async function returning a promise
 * would wait for it).
 */
const slowCommit = async (sql: string, params: unknown[], sleepMs: number) => {
  const slow = await holder(db.url);
  await slow.query('BEGIN');
  await slow.query(sql, params);
  await slow.query(`INSERT INTO app_checks (sleep_ms) VALUES ($1)`, [sleepMs]);
  const committing = slow.query('COMMIT');
  await waitUntil(
    async () => {
      const r = await db.pool.query<{ n: string }>(
        `SELECT count(*)::text n FROM pg_stat_activity WHERE application_name = 'order-test-holder' AND wait_event = 'PgSleep'`,
      );
      return r.rows[0]?.n === '1';
    },
    10_000,
    'the slow commit to sleep in its COMMIT',
  );
  return { committing };
};
const write = (name: string, pool = db.pool) =>
  pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [e1, c1, name]);
const names = (frames: Frame[]) => frames.map((f) => (f.data as { voter_name: string }).voter_name);
const inOrder = (frames: Frame[]) =>
  frames.every(
    (f, i) => i === 0 || compare(decodeCursor(frames[i - 1]?.cursor) ?? ZERO, decodeCursor(f.cursor) ?? ZERO) < 0,
  );
/** A client on election:* from now, and its events once n arrived (the deadline is generous: liveness, not speed). */
const watcher = async (): Promise<TestClient> => {
  const c = await connect(hub, { token: admin });
  await c.next((f) => f.type === 'connection_success');
  return c;
};
const stillOpen = async (c: pg.Client) => {
  const r = await c.query<{ s: string }>(`SELECT pg_current_xact_id_if_assigned()::text AS s`);
  return r.rows[0]?.s !== null;
};

describe('transactions open elsewhere delay nothing', () => {
  it('a write transaction held open in another database: rows written meanwhile arrive while it is open', async () => {
    const c = await watcher();
    const h = await holder(other.url);
    await h.query('BEGIN');
    await h.query(`INSERT INTO imports (payload) VALUES ('long import')`);
    for (let i = 0; i < 20; i++) await write(`o${i}`);
    const got = await eventsReceived(c, 20, 20_000);
    expect(names(got)).toEqual(Array.from({ length: 20 }, (_, i) => `o${i}`));
    expect(await stillOpen(h)).toBe(true);
    await h.query('COMMIT');
    await c.close();
  }, 40_000);

  it('a transaction in this database that wrote no watched table: rows written meanwhile arrive while it is open', async () => {
    const c = await watcher();
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(`INSERT INTO scratch (note) VALUES ('report job')`);
    for (let i = 0; i < 5; i++) await write(`s${i}`);
    expect(names(await eventsReceived(c, 5, 20_000))).toEqual(['s0', 's1', 's2', 's3', 's4']);
    expect(await stillOpen(h)).toBe(true);
    await h.query('ROLLBACK');
    await c.close();
  }, 40_000);

  it('a transaction that wrote a watched table and has not committed: others arrive meanwhile; its rows after its commit, in commit order; no cursor skips them', async () => {
    const c = await watcher();
    const start = String(c.frames[0]?.cursor);
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(`INSERT INTO scratch (note) VALUES ('wrote first')`); // its txid is older than every row below
    await h.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'held'), ($1, $2, 'held too')`,
      [e1, c1],
    );
    for (let i = 0; i < 5; i++) await write(`w${i}`);
    const before = await eventsReceived(c, 5, 20_000);
    expect(names(before)).toEqual(['w0', 'w1', 'w2', 'w3', 'w4']);
    expect(await stillOpen(h)).toBe(true);
    const seam = String(before[4]?.cursor);
    await h.query('COMMIT');
    await write('w5');
    const all = await eventsReceived(c, 8, 20_000);
    expect(names(all)).toEqual(['w0', 'w1', 'w2', 'w3', 'w4', 'held', 'held too', 'w5']);
    expect(inOrder(all)).toBe(true);
    // From the cursor taken while it was open, and from before everything: nothing skipped.
    for (const [since, expected] of [
      [seam, ['held', 'held too', 'w5']],
      [start, ['w0', 'w1', 'w2', 'w3', 'w4', 'held', 'held too', 'w5']],
    ] as const) {
      const r = await connect(hub, { token: admin, query: 'subscribe=none' });
      r.send({ type: 'subscribe', topics: ['election:*'], since });
      await r.next((f) => f.type === 'subscribed');
      expect(names(r.events())).toEqual(expected);
      await r.close();
    }
    await c.close();
  }, 40_000);
});

describe('keys given after the commit', () => {
  const lastKey = async () =>
    BigInt((await db.pool.query<{ v: string }>(`SELECT last_seq::text AS v FROM hub.commit_state`)).rows[0]?.v ?? '0');

  it('a transaction that fails at COMMIT (the application’s deferred constraint) gets no key: the next one follows without a hole', async () => {
    const c = await watcher();
    await write('before');
    await eventsReceived(c, 1, 20_000);
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'doomed')`, [e1, c1]);
    await h.query(`INSERT INTO app_checks (fail) VALUES (true)`);
    await expect(h.query('COMMIT')).rejects.toThrow(/app check failed/);
    await sequenced(db.pool);
    const last = await lastKey();
    await write('after the abort');
    const got = await eventsReceived(c, 2, 20_000);
    expect(names(got)).toEqual(['before', 'after the abort']);
    expect(decodeCursor(got[1]?.cursor)?.seq).toBe(last + 1n);
    await c.close();
  }, 40_000);

  it('a snapshot cut after a transaction that aborted (nothing visible after it) is a cursor the hub reaches', async () => {
    await write('before the abort');
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'aborts at commit')`,
      [e1, c1],
    );
    await h.query(`INSERT INTO app_checks (fail) VALUES (true)`);
    await expect(h.query('COMMIT')).rejects.toThrow(/app check failed/);
    const snap = await computeSnapshot(db.pool, String(e1));
    const r = await connect(hub, { token: admin, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: [`election:${e1}`], since: snap?.cursor });
    expect((await r.next((f) => f.type === 'subscribed' || f.type === 'error')).type).toBe('subscribed');
    await write('after');
    expect(names(await eventsReceived(r, 1, 20_000))).toEqual(['after']);
    await r.close();
  }, 40_000);

  it('a transaction still in its COMMIT holds back nothing: a later one arrives meanwhile, and it comes once it has committed', async () => {
    const c = await watcher();
    const { committing } = await slowCommit(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'slow')`,
      [e1, c1],
      1000,
    );
    let done = false;
    void committing.then(() => (done = true));
    await write('fast');
    expect(names(await eventsReceived(c, 1, 20_000))).toEqual(['fast']);
    expect(done).toBe(false);
    await committing;
    const got = await eventsReceived(c, 2, 20_000);
    expect(names(got)).toEqual(['fast', 'slow']);
    expect(inOrder(got)).toBe(true);
    await c.close();
  }, 40_000);

  it('hub.publish gets a key like captured rows; a rolled-back savepoint leaves nothing behind', async () => {
    const c = await watcher();
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query('SAVEPOINT s');
    await h.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'rolled back')`, [
      e1,
      c1,
    ]);
    await h.query('ROLLBACK TO SAVEPOINT s');
    await h.query(`SELECT hub.publish('election:*', 'note', '{"n": 1}')`);
    await h.query('COMMIT');
    await write('next');
    const got = await eventsReceived(c, 2, 20_000);
    expect(got.map((f) => f.type)).toEqual(['note', 'guarantee_update']);
    expect(names(got.slice(1))).toEqual(['next']);
    expect(inOrder(got)).toBe(true);
    await c.close();
  }, 40_000);
});

describe('hub.sequence, on a database no hub reads', () => {
  let q: TestDatabase;
  beforeAll(async () => {
    q = await createTestDatabase('hub_order_seq');
  });
  afterAll(async () => {
    await q?.drop();
  });
  const keys = async () =>
    (
      await q.pool.query<{ s: string; t: string; n: string }>(
        `SELECT c.seq::text s, c.txid::text t, count(o.id)::text n FROM hub.commits c LEFT JOIN hub.outbox o ON o.txid = c.txid
         GROUP BY c.seq, c.txid ORDER BY c.seq`,
      )
    ).rows;
  const insert = (c: Pick<pg.Pool, 'query'>, rows = 1) =>
    c.query<{ t: string }>(
      `INSERT INTO guarantees (election_id, committee_id) SELECT 1, 1 FROM generate_series(1, $1::int) RETURNING pg_current_xact_id()::text AS t`,
      [rows],
    );

  it('catching up in pieces (max_txs) gives every committed transaction one key, in order, without holes; one in flight and one aborted get none until it ends', async () => {
    await sequenced(q.pool);
    const first = BigInt(
      (await q.pool.query<{ f: string }>('SELECT hub.commit_frontier()::text AS f')).rows[0]?.f ?? '0',
    );
    // In flight from before the others (a lower transaction id), and a bulk one among them.
    const open = new pg.Client({ connectionString: q.url });
    await open.connect();
    try {
      await open.query('BEGIN');
      const openTx = (await insert(open, 2)).rows[0]?.t;
      const committed: string[] = [];
      for (let i = 0; i < 7; i++) committed.push((await insert(q.pool, i === 3 ? 500 : 1)).rows[0]?.t ?? '');
      const aborted = await q.pool.connect();
      try {
        await aborted.query('BEGIN');
        await insert(aborted);
        await aborted.query('ROLLBACK');
      } finally {
        aborted.release();
      }
      const frontiers: string[] = [];
      for (let i = 0; i < 4; i++)
        frontiers.push((await q.pool.query<{ f: string }>('SELECT hub.sequence(true, 3)::text AS f')).rows[0]?.f ?? '');
      // 3, 3, 1, then nothing new: the frontier after each call.
      expect(frontiers.map((f) => BigInt(f) - first)).toEqual([3n, 6n, 7n, 7n]);
      const k = await keys();
      const mine = k.filter((r) => BigInt(r.s) >= first);
      expect(mine.map((r) => r.t)).toEqual(committed);
      expect(mine.map((r) => BigInt(r.s) - first)).toEqual([0n, 1n, 2n, 3n, 4n, 5n, 6n]);
      expect(mine.map((r) => Number(r.n))).toEqual([1, 1, 1, 500, 1, 1, 1]);
      await open.query('COMMIT');
      expect((await q.pool.query<{ f: string }>('SELECT hub.sequence()::text AS f')).rows[0]?.f).toBe(
        String(first + 8n),
      );
      expect((await keys()).map((r) => r.t).slice(-1)).toEqual([openTx]);
    } finally {
      await open.end();
    }
  }, 40_000);

  it('one call keys what committed since the last in the order its rows were written: an older transaction that updated a row a newer one created, after that one committed, comes after it', async () => {
    await sequenced(q.pool);
    const older = new pg.Client({ connectionString: q.url });
    await older.connect();
    try {
      // The older transaction takes its id first (a captured write), then waits...
      await older.query('BEGIN');
      const olderTx = (await insert(older)).rows[0]?.t;
      // ...a newer one creates a row and commits...
      const created = await q.pool.query<{ id: string; t: string }>(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (1, 1, 'created')
         RETURNING id::text AS id, pg_current_xact_id()::text AS t`,
      );
      const newerTx = created.rows[0]?.t;
      expect(BigInt(newerTx ?? '0')).toBeGreaterThan(BigInt(olderTx ?? '0'));
      // ...and the older one updates that row, then commits: its update depends on the creation.
      await older.query(`UPDATE guarantees SET status = 'confirmed' WHERE id = $1`, [created.rows[0]?.id]);
      await older.query('COMMIT');
      // One call sees both: the creation's key comes first, or a client applies the update of a
      // row before the row exists.
      await q.pool.query('SELECT hub.sequence()');
      const order = (await keys()).map((r) => r.t).filter((t) => t === olderTx || t === newerTx);
      expect(order).toEqual([newerTx, olderTx]);
    } finally {
      await older.end();
    }
  });

  it('hub.next_page gives the keys and returns the page in one call: nothing new is its frontier alone; what committed since comes keyed, after the position, with every row; a key left with no row after the position comes as one row without id', async () => {
    await sequenced(q.pool);
    const head = await readAfter(q.pool, { seq: 0n, id: 0n }, 1);
    const f0 = head.frontier;
    const empty = await readAfter(q.pool, { seq: f0, id: 0n }, 1000);
    expect(empty).toEqual({ rows: [], more: false, frontier: f0 });
    // Committed without a key: the one call keys them and reads them.
    const txs = [(await insert(q.pool, 2)).rows[0]?.t, (await insert(q.pool)).rows[0]?.t];
    const page = await readAfter(q.pool, { seq: f0, id: 0n }, 1000);
    expect(page.frontier).toBe(f0 + 2n);
    expect(page.more).toBe(false);
    expect(page.rows.map((r) => [BigInt(String(r.seq)) - f0, r.kind, r.action])).toEqual([
      [0n, 'guarantee', 'created'],
      [0n, 'guarantee', 'created'],
      [1n, 'guarantee', 'created'],
    ]);
    expect((await keys()).slice(-2).map((r) => r.t)).toEqual(txs);
    // From the middle of the first key: its last row, then the second key; past a key's last
    // row, the key alone (id null).
    const secondRow = page.rows[1] as { id: string };
    const rest = await readAfter(q.pool, { seq: f0, id: BigInt(secondRow.id) - 1n }, 1000);
    expect(rest.rows.map((r) => r.id)).toEqual([secondRow.id, page.rows[2]?.id]);
    const done = await readAfter(q.pool, { seq: f0, id: BigInt(secondRow.id) }, 1000);
    expect(done.rows.map((r) => [BigInt(String(r.seq)) - f0, r.id])).toEqual([
      [0n, null],
      [1n, page.rows[2]?.id],
    ]);
    // A row limit: the page is full, more follow.
    const one = await readAfter(q.pool, { seq: f0, id: 0n }, 1);
    expect([one.rows.length, one.more]).toEqual([1, true]);
    await expect(q.pool.query('SELECT * FROM hub.next_page(0, 0, 0, 1)')).rejects.toThrow(
      /max_rows must be 1 to 10000/,
    );
    await expect(q.pool.query('SELECT * FROM hub.next_page(0, 0, 10001, 1)')).rejects.toThrow(/max_rows/);
  });

  it('hub.read_page returns the rows hub.next_page returns, without giving keys (sql/014 repeats the page of 011)', async () => {
    const f0 = (await readAfter(q.pool, { seq: 0n, id: 0n }, 1)).frontier;
    await insert(q.pool, 3);
    // A vote and its update: the columns the totals read (count, the old election and committee).
    const v = await q.pool.query<{ id: string }>(
      `INSERT INTO votes (election_id, committee_id, count) VALUES (1, 1, 5) RETURNING id::text`,
    );
    await q.pool.query(`UPDATE votes SET count = 7, committee_id = 2 WHERE id = $1`, [v.rows[0]?.id]);
    // Nothing committed since is keyed by hub.read_page: the page it reads is empty.
    expect(await readPage(q.pool, { seq: f0, id: 0n }, 1000)).toEqual({ rows: [], more: false });
    const next = await readAfter(q.pool, { seq: f0, id: 0n }, 1000);
    expect(next.rows.map((r) => r.action)).toContain('updated');
    for (const [after, limit, bytes] of [
      [{ seq: f0, id: 0n }, 1000, 4194304],
      [{ seq: f0, id: 0n }, 2, 4194304],
      [{ seq: f0, id: BigInt(String(next.rows[0]?.id)) }, 1000, 4194304],
      [{ seq: f0, id: 0n }, 1000, 1],
    ] as const) {
      const a = await readAfter(q.pool, after, limit, bytes);
      const b = await readPage(q.pool, after, limit, bytes);
      expect(b).toEqual({ rows: a.rows.map((r) => ({ ...r, frontier: null })), more: a.more });
    }
  });

  it('refuses to run other than at READ COMMITTED; returns NULL without waiting when another call holds the lock, or gives up after 5 s when waiting', async () => {
    const c = await q.pool.connect();
    try {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await expect(c.query('SELECT hub.sequence()')).rejects.toThrow(/READ COMMITTED/);
      await c.query('ROLLBACK');
      await c.query('BEGIN');
      await c.query('SELECT hub.sequence()');
      const other = await q.pool.query<{ f: string | null }>('SELECT hub.sequence(false) AS f');
      expect(other.rows[0]?.f).toBeNull();
      // Held in a longer transaction: a waiting call fails instead of hanging every reader.
      const t0 = Date.now();
      await expect(q.pool.query('SELECT hub.sequence()')).rejects.toThrow(/lock timeout/);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(4900);
      await c.query('COMMIT');
      expect((await q.pool.query<{ f: string | null }>('SELECT hub.sequence(false) AS f')).rows[0]?.f).not.toBeNull();
    } finally {
      c.release();
    }
  }, 20_000);
});

/** Holds the sequencer's lock (hub.sequence's) in a transaction of its own until `release`. */
const holdSequencer = async () => {
  const h = await holder(db.url);
  await h.query('BEGIN');
  await h.query('SELECT pg_advisory_xact_lock(7340112009)');
  return { release: () => h.query('COMMIT') };
};

describe('snapshot + since = the database', () => {
  const votes = async () =>
    Number(
      (
        await db.pool.query<{ v: string }>(`SELECT coalesce(sum(count), 0)::text v FROM votes WHERE election_id = $1`, [
          e1,
        ])
      ).rows[0]?.v,
    );
  const votesAfter = async (cursor: string | undefined, n: number) => {
    const r = await connect(hub, { token: admin, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: [`election:${e1}`], since: cursor });
    await r.next((f) => f.type === 'subscribed');
    await waitUntil(
      () => r.events().filter((f) => f.type === 'voting_update').length >= n,
      10_000,
      'the votes after the cursor',
    );
    const after = r
      .events()
      .filter((f) => f.type === 'voting_update')
      .map((f) => (f.data as { count: number }).count);
    await r.close();
    return after;
  };

  it('a snapshot taken while one transaction is in its COMMIT and a later one has committed: the snapshot and the events after its cursor add up to the database', async () => {
    const { committing } = await slowCommit(
      `INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 100)`,
      [e1, c1],
      600,
    );
    await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 7)`, [e1, c1]);
    const snap = await computeSnapshot(db.pool, String(e1));
    expect(snap).not.toBeNull();
    await committing;
    const expected = await votes();
    const after = await votesAfter(snap?.cursor, 1);
    // The 100 was not visible to the snapshot: its event follows the cursor, the 7's may precede it.
    expect(after).toContain(100);
    expect((snap?.totals.votes ?? 0) + after.reduce((a, b) => a + b, 0)).toBe(expected);
  }, 40_000);

  it('rows visible to the snapshot that have no key yet (no call has given them one) are subtracted: their events follow the cursor', async () => {
    const lock = await holdSequencer();
    let snap: Awaited<ReturnType<typeof computeSnapshot>>;
    try {
      await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 11), ($1, $2, 13)`, [
        e1,
        c1,
      ]);
      snap = await computeSnapshot(db.pool, String(e1));
    } finally {
      await lock.release();
    }
    const expected = await votes();
    expect(snap?.totals.votes).toBe(expected - 24);
    expect(await votesAfter(snap?.cursor, 2)).toEqual([11, 13]);
  }, 40_000);

  it('a TRUNCATE visible to the snapshot without a key below its frontier: the snapshot is the state at its cursor, not the emptied table minus the rows created before it', async () => {
    const N = 5;
    const counts = async () => {
      const r = await db.pool.query<{ g: string }>(
        `SELECT (SELECT count(*) FROM guarantees WHERE election_id = $1)::text g`,
        [e1],
      );
      return Number(r.rows[0]?.g);
    };
    const before = await counts();
    const txOf = async (sql: string, params: unknown[] = []) => {
      const c = await db.pool.connect();
      try {
        await c.query('BEGIN');
        await c.query(sql, params);
        const t = (await c.query<{ t: string }>('SELECT pg_current_xact_id()::text AS t')).rows[0]?.t ?? '';
        await c.query('COMMIT');
        return t;
      } finally {
        c.release();
      }
    };
    // No call can give keys meanwhile: the inserts and the TRUNCATE are visible and keyless.
    const lock = await holdSequencer();
    const released = new Promise((r) => setTimeout(r, 300)).then(() => lock.release());
    let snap: Awaited<ReturnType<typeof computeSnapshot>>;
    let inserted: string;
    let truncated: string;
    try {
      inserted = await txOf(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, 'late ' || i FROM generate_series(1, $3::int) i`,
        [e1, c1, N],
      );
      truncated = await txOf('TRUNCATE guarantees');
      snap = await computeSnapshot(db.pool, String(e1));
    } finally {
      await released;
    }
    const keyOf = async (t: string) =>
      BigInt(
        (await db.pool.query<{ s: string }>('SELECT seq::text s FROM hub.commits WHERE txid = $1::text::xid8', [t]))
          .rows[0]?.s ?? '0',
      );
    const cut = decodeCursor(snap?.cursor)?.seq ?? 0n;
    const atCursor = cut > (await keyOf(truncated)) ? 0 : before + (cut > (await keyOf(inserted)) ? N : 0);
    console.log('late truncate:', { before, snapshot: snap?.totals.guarantees, atCursor });
    expect(snap?.totals.guarantees).toBe(atCursor);
    // And the events after it (a TRUNCATE empties the count) lead to the database.
    await sequenced(db.pool);
    const events = (
      await db.pool.query<{ kind: string; action: string }>(
        `SELECT kind, action FROM hub.outbox_in_order WHERE seq >= $1::bigint ORDER BY seq, id`,
        [cut.toString()],
      )
    ).rows;
    let replay = snap?.totals.guarantees ?? NaN;
    for (const e of events) {
      if (e.kind === 'guarantee' && e.action === 'created') replay += 1;
      else if (e.kind === 'guarantee' && e.action === 'truncated') replay = 0;
    }
    expect(replay).toBe(await counts());
  }, 40_000);

  it('a late TRUNCATE that gets no key within the bound fails the snapshot with a clear error; computed again after, it is right', async () => {
    const lock = await holdSequencer();
    try {
      await write('before the truncate');
      await db.pool.query('TRUNCATE guarantees');
      const t0 = Date.now();
      await expect(computeSnapshot(db.pool, String(e1), { lateTruncateWaitMs: 200 })).rejects.toThrow(
        /TRUNCATE of public\.guarantees .* no commit key below the frontier after 200 ms/,
      );
      expect(Date.now() - t0).toBeLessThan(1000);
    } finally {
      await lock.release();
    }
    const snap = await computeSnapshot(db.pool, String(e1), { lateTruncateWaitMs: 200 });
    expect(snap?.totals).toEqual({ guarantees: 0, attendance: 0, votes: await votes() });
  }, 40_000);
});

describe('pruning by key', () => {
  it('prunes keys in order, only below the frontier; a transaction still in its COMMIT has no key and stops nothing', async () => {
    const count = async (t: string) =>
      Number((await db.pool.query<{ n: string }>(`SELECT count(*)::text n FROM ${t}`)).rows[0]?.n);
    await write('before');
    const { committing } = await slowCommit(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'committing')`,
      [e1, c1],
      800,
    );
    await write('after');
    await sequenced(db.pool);
    while ((await prune(db.pool, 0, 7)) > 0);
    // Everything with a key went, in order; the committing one's row (not visible yet) stays.
    expect(await count('hub.commits')).toBe(0);
    expect(await count('hub.outbox')).toBe(0);
    await committing;
    const left = (await db.pool.query<{ n: string }>(`SELECT data->>'voter_name' n FROM hub.outbox`)).rows;
    expect(left.map((r) => r.n)).toEqual(['committing']);
    await sequenced(db.pool);
    const key =
      BigInt((await db.pool.query<{ f: string }>('SELECT hub.commit_frontier()::text f')).rows[0]?.f ?? '0') - 1n;
    while ((await prune(db.pool, 0, 7)) > 0);
    expect(await count('hub.outbox')).toBe(0);
    expect(await count('hub.commits')).toBe(0);
    expect((await prunedPosition(db.pool)).seq).toBe(key);
  }, 40_000);
});

describe('upgrade from the (txid, id) order', () => {
  it('rows already in the outbox keep their order; old cursors resume exactly; one from a hub of the old order after the migration answers resync', async () => {
    // A database as the previous version left it: the hub files up to 004, then this one.
    const dir = mkdtempSync(path.join(tmpdir(), 'hub-upgrade-'));
    const sql = fileURLToPath(new URL('../sql/', import.meta.url));
    mkdirSync(path.join(dir, 'reference'));
    for (const f of ['002_hub_outbox.sql', '004_ids_and_topics.sql'])
      copyFileSync(path.join(sql, f), path.join(dir, f));
    for (const f of readdirSync(path.join(sql, 'reference')))
      copyFileSync(path.join(sql, 'reference', f), path.join(dir, 'reference', f));
    const old = await createTestDatabase('hub_order_old', { schema: 'none' });
    let h2: Hub | undefined;
    try {
      await migrate(old.url, { dir, referenceSchema: true });
      const s = await seed(old.pool, 1, 1);
      const [e, cm] = [s.elections[0], s.committees.get(s.elections[0] as number)?.[0]];
      const w = (name: string) =>
        old.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [
          e,
          cm,
          name,
        ]);
      for (const n of ['a', 'b']) await w(n);
      await old.pool.query(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'c1'), ($1, $2, 'c2')`,
        [e, cm],
      );
      const legacy = (
        await old.pool.query<{ t: string; i: string; n: string }>(
          `SELECT txid::text t, id::text i, data->>'voter_name' n FROM hub.outbox ORDER BY txid, id`,
        )
      ).rows;
      expect(legacy).toHaveLength(4);
      // Cursors the old hub issued: an event's (txid, id), and its horizon (xmin, 0).
      const afterA = encodeCursor({ seq: BigInt(legacy[0]?.t ?? '0'), id: BigInt(legacy[0]?.i ?? '0') });
      const afterC1 = encodeCursor({ seq: BigInt(legacy[2]?.t ?? '0'), id: BigInt(legacy[2]?.i ?? '0') });
      const x =
        (await old.pool.query<{ x: string }>('SELECT pg_snapshot_xmin(pg_current_snapshot())::text x')).rows[0]?.x ??
        '0';
      const horizon = encodeCursor({ seq: BigInt(x), id: 0n });

      const applied = await migrate(old.url);
      expect(applied.applied).toContain('006_commit_order.sql');
      // The old rows' keys are their txids, in their old order.
      const keys = (
        await old.pool.query<{ s: string; i: string }>(
          `SELECT seq::text s, id::text i FROM hub.outbox_in_order ORDER BY seq, id`,
        )
      ).rows;
      expect(keys.map((k) => [k.s, k.i])).toEqual(legacy.map((l) => [l.t, l.i]));
      for (const n of ['d', 'e']) await w(n);
      // A cursor a hub of the old order could issue after the migration: beyond legacy_limit.
      const limit =
        (await old.pool.query<{ l: string }>('SELECT legacy_limit::text l FROM hub.outbox_state')).rows[0]?.l ?? '0';
      const foreign = encodeCursor({ seq: BigInt(limit) + 1n, id: 0n });

      h2 = await startTestHub(old.url);
      const resumeWith = async (since: string) => {
        const r = await connect(h2 as Hub, { token: admin, query: 'subscribe=none' });
        r.send({ type: 'subscribe', topics: ['election:*'], since });
        await r.next((f) => f.type === 'subscribed');
        const out = { types: r.frames.filter((f) => f.type === 'resync').map((f) => f.type), names: names(r.events()) };
        await r.close();
        return out;
      };
      expect(await resumeWith(afterA)).toEqual({ types: [], names: ['b', 'c1', 'c2', 'd', 'e'] });
      expect(await resumeWith(afterC1)).toEqual({ types: [], names: ['c2', 'd', 'e'] });
      // (The horizon is cluster-wide: another session's transaction may hold it below some of these rows.)
      const aboveHorizon = legacy.filter((l) => BigInt(l.t) >= BigInt(x)).map((l) => l.n);
      expect(await resumeWith(horizon)).toEqual({ types: [], names: [...aboveHorizon, 'd', 'e'] });
      expect(await resumeWith(foreign)).toEqual({ types: ['resync'], names: [] });
    } finally {
      await h2?.stop();
      await old.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
