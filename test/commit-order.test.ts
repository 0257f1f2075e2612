import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APP_CHECKS_SQL, createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { type Frame, type TestClient, connect, eventsReceived, startTestHub, token, waitUntil } from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { ZERO, compare, decodeCursor, encodeCursor } from '../src/events/position.ts';
import { migrate } from '../src/db/migrate.ts';
import { computeSnapshot } from '../src/db/snapshot.ts';
import { prune, prunedPosition } from '../src/db/outbox.ts';

/*
 * Order without the cluster-wide horizon (issue 14 item 3, sql/006_commit_order.sql), from
 * outside: transactions that are open elsewhere delay nothing; a transaction that writes the
 * outbox takes its place in the order when it commits; aborted keys are skipped, committing
 * ones are waited for. "Arrive" below means "arrive while the holder is still open": the
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
  // The application's own deferred constraint: fails or takes its time at COMMIT, after the
  // hub's key (it is queued after the watched write that queued ours).
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
 * at COMMIT, after the hub's commit key was taken: resolves once it sleeps (its key is taken and
 * still committing), with the COMMIT's promise (wrapped: an async function returning a promise
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
    'the slow commit to take its key',
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

describe('keys taken at commit', () => {
  it('a transaction that fails after its key was taken (the application’s deferred constraint) leaves a hole that is skipped', async () => {
    const c = await watcher();
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'doomed')`, [e1, c1]);
    await h.query(`INSERT INTO app_checks (fail) VALUES (true)`);
    const last = await db.pool.query<{ v: string }>(`SELECT pg_sequence_last_value('hub.commit_seq')::text AS v`);
    await expect(h.query('COMMIT')).rejects.toThrow(/app check failed/);
    // It took a key: the sequence moved, and nothing committed under it.
    const taken = await db.pool.query<{ v: string }>(`SELECT pg_sequence_last_value('hub.commit_seq')::text AS v`);
    const hole = BigInt(taken.rows[0]?.v ?? '0');
    expect(hole).toBe(BigInt(last.rows[0]?.v ?? '0') + 1n);
    await write('after the hole');
    const got = await eventsReceived(c, 1, 20_000);
    expect(names(got)).toEqual(['after the hole']);
    expect(decodeCursor(got[0]?.cursor)?.seq).toBe(hole + 1n);
    await c.close();
  }, 40_000);

  it('a snapshot cut after a last key that aborted (nothing visible after it) is a cursor the hub reaches', async () => {
    await write('before the abort');
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'aborts at commit')`,
      [e1, c1],
    );
    await h.query(`INSERT INTO app_checks (fail) VALUES (true)`);
    await expect(h.query('COMMIT')).rejects.toThrow(/app check failed/);
    // The frontier is past the aborted key; the reader sees no later key that would show the hole.
    const snap = await computeSnapshot(db.pool, String(e1));
    const r = await connect(hub, { token: admin, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: [`election:${e1}`], since: snap?.cursor });
    expect((await r.next((f) => f.type === 'subscribed' || f.type === 'error')).type).toBe('subscribed');
    await write('after');
    expect(names(await eventsReceived(r, 1, 20_000))).toEqual(['after']);
    await r.close();
  }, 40_000);

  it('a transaction still committing holds back only the keys after it, and goes first', async () => {
    const c = await watcher();
    // Its key is taken before the sleep: wait for it, then commit another one past it.
    const { committing } = await slowCommit(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'slow')`,
      [e1, c1],
      400,
    );
    await write('fast');
    await committing;
    const got = await eventsReceived(c, 2, 20_000);
    expect(names(got)).toEqual(['slow', 'fast']);
    expect(inOrder(got)).toBe(true);
    await c.close();
  }, 40_000);

  it('SET CONSTRAINTS ALL IMMEDIATE takes the key at once: that transaction goes first, nothing is skipped', async () => {
    const c = await watcher();
    const h = await holder(db.url);
    await h.query('BEGIN');
    await h.query('SET CONSTRAINTS ALL IMMEDIATE');
    await h.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'immediate')`, [
      e1,
      c1,
    ]);
    const writing = write('behind it');
    await new Promise((r) => setTimeout(r, 100));
    await h.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'immediate, later row')`,
      [e1, c1],
    );
    await h.query('COMMIT');
    await writing;
    expect(names(await eventsReceived(c, 3, 20_000))).toEqual(['immediate', 'immediate, later row', 'behind it']);
    await c.close();
  }, 40_000);

  it('hub.publish takes a key like captured rows; a rolled-back savepoint leaves nothing behind', async () => {
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

describe('snapshot + since = the database', () => {
  it('a snapshot taken while one transaction is committing (key taken) and a later one has committed is cut before both, and their events follow it', async () => {
    const votes = async () =>
      Number(
        (
          await db.pool.query<{ v: string }>(
            `SELECT coalesce(sum(count), 0)::text v FROM votes WHERE election_id = $1`,
            [e1],
          )
        ).rows[0]?.v,
      );
    const c = await watcher();
    const { committing } = await slowCommit(
      `INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 100)`,
      [e1, c1],
      600,
    );
    await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 7)`, [e1, c1]);
    // Visible now: the 7 (a later key). Not yet: the 100 (its key is still committing).
    const snap = await computeSnapshot(db.pool, String(e1));
    expect(snap).not.toBeNull();
    await committing;
    const expected = await votes();
    const r = await connect(hub, { token: admin, query: 'subscribe=none' });
    r.send({ type: 'subscribe', topics: [`election:${e1}`], since: snap?.cursor });
    await r.next((f) => f.type === 'subscribed');
    await waitUntil(
      () => r.events().filter((f) => f.type === 'voting_update').length >= 2,
      10_000,
      'the two votes after the cursor',
    );
    const after = r
      .events()
      .filter((f) => f.type === 'voting_update')
      .map((f) => (f.data as { count: number }).count);
    expect(after).toEqual([100, 7]);
    expect((snap?.totals.votes ?? 0) + after.reduce((a, b) => a + b, 0)).toBe(expected);
    await r.close();
    await c.close();
  }, 40_000);

  it('a TRUNCATE visible above the frontier (a lower key still committing): the snapshot is the state at its cursor, not the emptied table minus the rows created before it', async () => {
    const N = 5;
    const counts = async () => {
      const r = await db.pool.query<{ g: string; v: string }>(
        `SELECT (SELECT count(*) FROM guarantees WHERE election_id = $1)::text g,
                (SELECT coalesce(sum(count), 0) FROM votes WHERE election_id = $1)::text v`,
        [e1],
      );
      return { guarantees: Number(r.rows[0]?.g), votes: Number(r.rows[0]?.v) };
    };
    const before = await counts();
    const lastKey = async () =>
      BigInt(
        (await db.pool.query<{ v: string }>(`SELECT pg_sequence_last_value('hub.commit_seq')::text v`)).rows[0]?.v ??
          '0',
      );
    // The held key writes another watched table (a writer of guarantees would block the TRUNCATE).
    const { committing } = await slowCommit(
      `INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 100)`,
      [e1, c1],
      1000,
    );
    // (Waited for whatever happens: the next test must not meet it still committing.)
    const { held, inserted, truncated, snap } = await (async () => {
      try {
        const held = await lastKey();
        await db.pool.query(
          `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, 'late ' || i FROM generate_series(1, $3::int) i`,
          [e1, c1, N],
        );
        const inserted = await lastKey();
        await db.pool.query('TRUNCATE guarantees');
        const truncated = await lastKey();
        expect([inserted, truncated]).toEqual([held + 1n, held + 2n]);
        const snap = await computeSnapshot(db.pool, String(e1));
        return { held, inserted, truncated, snap };
      } finally {
        await committing;
      }
    })();
    const cut = decodeCursor(snap?.cursor)?.seq ?? 0n;
    // The database after every key below the cursor (they go held, inserted, truncated).
    const atCursor = {
      guarantees: cut > truncated ? 0 : before.guarantees + (cut > inserted ? N : 0),
      votes: before.votes + (cut > held ? 100 : 0),
    };
    console.log('late truncate:', { before, cursorKeyMinusHeld: Number(cut - held), snapshot: snap?.totals, atCursor });
    expect({ guarantees: snap?.totals.guarantees, votes: snap?.totals.votes }).toEqual(atCursor);
    // And the events after it (a TRUNCATE empties the count) lead to the database.
    const events = (
      await db.pool.query<{ kind: string; action: string; count: string | null }>(
        `SELECT kind, action, data->>'count' AS count FROM hub.outbox_in_order WHERE seq >= $1::bigint ORDER BY seq, id`,
        [cut.toString()],
      )
    ).rows;
    const replay = { guarantees: snap?.totals.guarantees ?? NaN, votes: snap?.totals.votes ?? NaN };
    for (const e of events) {
      if (e.kind === 'guarantee' && e.action === 'created') replay.guarantees += 1;
      else if (e.kind === 'guarantee' && e.action === 'truncated') replay.guarantees = 0;
      else if (e.kind === 'vote' && e.action === 'created') replay.votes += Number(e.count);
    }
    expect(replay).toEqual(await counts());
  }, 40_000);

  it('a late TRUNCATE whose lower keys stay committing past the bound fails the snapshot with a clear error; computed again after, it is right', async () => {
    const { committing } = await slowCommit(
      `INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 3)`,
      [e1, c1],
      1500,
    );
    try {
      await write('before the truncate');
      await db.pool.query('TRUNCATE guarantees');
      const t0 = Date.now();
      await expect(computeSnapshot(db.pool, String(e1), { lateTruncateWaitMs: 200 })).rejects.toThrow(
        /TRUNCATE of public\.guarantees .* still committing after 200 ms/,
      );
      expect(Date.now() - t0).toBeLessThan(1000);
    } finally {
      await committing;
    }
    const snap = await computeSnapshot(db.pool, String(e1), { lateTruncateWaitMs: 200 });
    const votes = await db.pool.query<{ v: string }>(
      `SELECT coalesce(sum(count), 0)::text v FROM votes WHERE election_id = $1`,
      [e1],
    );
    expect(snap?.totals).toEqual({ guarantees: 0, attendance: 0, votes: Number(votes.rows[0]?.v) });
  }, 40_000);
});

describe('pruning by key', () => {
  it('prunes keys in order, only below the frontier (a key still committing stops it), with their markers', async () => {
    const count = async (t: string) =>
      Number((await db.pool.query<{ n: string }>(`SELECT count(*)::text n FROM ${t}`)).rows[0]?.n);
    await write('before');
    const { committing } = await slowCommit(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'committing')`,
      [e1, c1],
      800,
    );
    await write('after');
    const key =
      BigInt(
        (await db.pool.query<{ v: string }>(`SELECT pg_sequence_last_value('hub.commit_seq')::text v`)).rows[0]?.v ??
          '0',
      ) - 1n;
    while ((await prune(db.pool, 0, 7)) > 0);
    // Everything below the committing key went, in order; the key after it stays until it ends.
    const left = (
      await db.pool.query<{ s: string; n: string }>(
        `SELECT seq::text s, data->>'voter_name' n FROM hub.outbox_in_order ORDER BY seq, id`,
      )
    ).rows;
    expect(left.map((r) => r.n)).toEqual(['after']);
    expect(BigInt((await prunedPosition(db.pool)).seq)).toBeLessThan(key);
    await committing;
    while ((await prune(db.pool, 0, 7)) > 0);
    expect(await count('hub.outbox')).toBe(0);
    expect(await count('hub.commits')).toBe(0);
    expect(await count('hub.commit_marks')).toBe(0);
    expect((await prunedPosition(db.pool)).seq).toBe(key + 1n);
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
