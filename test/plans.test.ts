// The reader's calls keep their index plans however the outbox grows (sql/013_reader_plans.sql).
// A generic plan is made once per connection, with the statistics of that moment: a hub that
// starts on an empty outbox must not keep plans that read the whole table once it is full.
// The table's own counters tell how a call read it (pg_stat_xact_user_tables: this transaction's
// scans), so no timing is involved.
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readRange } from '../src/db/outbox.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';

let db: TestDatabase;
let reader: pg.Client;
let committee: number;
let election: number;

beforeAll(async () => {
  db = await createTestDatabase('hub_plans');
  const s = await seed(db.pool, 1, 1);
  election = s.elections[0] as number;
  committee = (s.committees.get(election) as number[])[0] as number;
  // Nothing analyzes or vacuums the tables behind the test's back (autovacuum usually would,
  // within a minute or so: a bulk import, a busy autovacuum or one turned off leave it as here).
  await db.pool.query(`ALTER TABLE hub.outbox SET (autovacuum_enabled = false);
    ALTER TABLE hub.commits SET (autovacuum_enabled = false);
    ANALYZE hub.outbox, hub.commits`);
  reader = new pg.Client({ connectionString: db.url });
  await reader.connect();
});

afterAll(async () => {
  await reader?.end();
  await db?.drop();
});

type Scans = { seq: number; idx: number };

/** Runs `sql` (or `run`) on the reader's connection, in a transaction of its own; how it read hub.outbox. */
async function scansOf(
  sql: string | (() => Promise<pg.QueryResultRow[]>),
  values: unknown[] = [],
): Promise<{ rows: pg.QueryResultRow[]; scans: Scans }> {
  await reader.query('BEGIN');
  try {
    const rows = typeof sql === 'string' ? (await reader.query(sql, values)).rows : await sql();
    const s = await reader.query<Scans>(
      `SELECT coalesce(seq_scan, 0)::int AS seq, coalesce(idx_scan, 0)::int AS idx
       FROM pg_stat_xact_user_tables WHERE relid = 'hub.outbox'::regclass`,
    );
    return { rows, scans: s.rows[0] as Scans };
  } finally {
    await reader.query('COMMIT');
  }
}

async function writeTransactions(n: number) {
  const w = new pg.Client({ connectionString: db.url });
  await w.connect();
  try {
    await w.query('SET synchronous_commit = off');
    await w.query(`DO $$ BEGIN
      FOR i IN 1..${n} LOOP
        INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (${election}, ${committee}, 'p' || i);
        COMMIT;
      END LOOP; END $$`);
  } finally {
    await w.end();
  }
}

it('hub.sequence, hub.next_page, hub.read_page and a replay (readRange) read the outbox by its index after it grew from empty, unanalyzed', async () => {
  // Plans made while the outbox is (nearly) empty: more than five calls each, past the custom
  // plans of PL/pgSQL and of a prepared statement. A replay runs on the hub's pool: a statement
  // prepared there (a named one) kept the generic plan PostgreSQL settled on after five runs (a
  // replay of 1 000 rows took 29-41 s after 20 000 such writes; planned at each run, 10-18 ms).
  const all = { all: true, elections: [], committees: [], topics: [] };
  const asPool = reader as unknown as pg.Pool;
  let head = 0n;
  for (let i = 0; i < 7; i++) {
    const { rows } = await scansOf('SELECT hub.sequence()::text AS f');
    head = BigInt(String(rows[0]?.f));
    await scansOf('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [head.toString()]);
    await scansOf('SELECT * FROM hub.read_page($1::bigint, 0, 1000, 4194304)', [head.toString()]);
    await scansOf(() => readRange(asPool, { seq: head - 1n, id: 0n }, { seq: head, id: 0n }, all, 1000));
  }

  await writeTransactions(3000);

  const keyed = await scansOf('SELECT hub.sequence(true, 5000)::text AS f');
  expect(BigInt(String(keyed.rows[0]?.f)) - head).toBe(3000n); // one key per transaction
  expect(keyed.scans.seq).toBe(0);
  expect(keyed.scans.idx).toBeGreaterThan(0);

  const page = await scansOf('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [head.toString()]);
  expect(page.rows).toHaveLength(1000);
  expect(page.rows[0]?.seq).toBe(head.toString());
  expect(page.scans.seq).toBe(0);
  expect(page.scans.idx).toBeGreaterThan(0);

  const further = await scansOf('SELECT * FROM hub.read_page($1::bigint, 0, 1000, 4194304)', [
    (head + 1000n).toString(),
  ]);
  expect(further.rows).toHaveLength(1000);
  expect(further.rows[0]?.seq).toBe((head + 1000n).toString());
  expect(further.scans.seq).toBe(0);
  expect(further.scans.idx).toBeGreaterThan(0);

  const replay = await scansOf(() =>
    readRange(asPool, { seq: head, id: 0n }, { seq: head + 3000n, id: 0n }, all, 1000),
  );
  expect(replay.rows).toHaveLength(1000);
  expect(replay.scans.seq).toBe(0);
  expect(replay.scans.idx).toBeGreaterThan(0);
});

it('hub.sequence, hub.next_page and hub.read_page are never compiled with JIT (their penalized seq scans cost past jit_above_cost)', async () => {
  // enable_seqscan = off leaves a 10^10 penalty on the seq scans no index can replace (the
  // one-row hub.commit_state, hub.watched): with JIT on, PostgreSQL compiled those statements at
  // every call (0.55 s of a 0.70 s page). auto_explain shows each nested statement's plan, with a
  // "JIT:" section when it was compiled.
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    const jit = await c.query<{ on: boolean }>(`SELECT pg_jit_available() AS on`);
    const plans: string[] = [];
    c.on('notice', (n) => plans.push(String(n.message ?? '')));
    await c.query(`LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
      SET auto_explain.log_analyze = on; SET auto_explain.log_level = notice`);
    const { rows } = await c.query<{ f: string }>('SELECT hub.sequence()::text AS f');
    await c.query('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [rows[0]?.f]);
    await c.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'jit')`, [
      election,
      committee,
    ]);
    await c.query('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [rows[0]?.f]);
    await c.query('SELECT * FROM hub.read_page($1::bigint, 0, 1000, 4194304)', [rows[0]?.f]);
    // The plans were seen: the statements that read hub.commit_state and hub.outbox.
    expect(plans.some((p) => /commit_state/.test(p))).toBe(true);
    expect(plans.some((p) => /outbox/.test(p))).toBe(true);
    if (jit.rows[0]?.on) expect(plans.filter((p) => /JIT:/.test(p)).length, 'statements compiled with JIT').toBe(0);
  } finally {
    await c.end();
  }
});
