import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { type TestClient, connect, startTestHub, token, waitUntil } from './support/hub.ts';
import { migrate } from '../src/db/migrate.ts';
import { startReader } from '../src/db/reader.ts';
import { createLogger } from '../src/log.ts';
import type { Hub } from '../src/main.ts';

/*
 * Capture functions generated per watched table (sql/005_capture.sql): the column allow-list,
 * TRUNCATE, and the regeneration of watches made before 005.
 */
const root = path.resolve(fileURLToPath(new URL('..', import.meta.url)));

let db: TestDatabase;
let hub: Hub;
let e1: number;
let c1: number;
const clients: TestClient[] = [];
const dbs: TestDatabase[] = [];

const open = async (opts: Parameters<typeof connect>[1]) => {
  const c = await connect(hub, opts);
  clients.push(c);
  await c.next((f) => f.type === 'connection_success');
  return c;
};
const get = async (p: string, bearer: string) => {
  const res = await fetch(`${hub.url}${p}`, { headers: { authorization: `Bearer ${bearer}` } });
  return { status: res.status, body: (await res.json()) as { totals?: Record<string, number>; cursor?: string } };
};

beforeAll(async () => {
  db = await createTestDatabase('hub_capture');
  const s = await seed(db.pool, 1, 2);
  [e1] = s.elections as [number];
  [c1] = s.committees.get(e1) as [number];
  hub = await startTestHub(db.url);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await hub?.stop();
  await db?.drop();
  for (const d of dbs) await d.drop();
});

describe('hub.watch columns: an allow-list', () => {
  it('keeps voter_name out of data and old; keeps the key, election, committee and (votes) count', async () => {
    await db.pool.query(`SELECT hub.watch('guarantees', 'guarantee', columns => ARRAY['status'])`);
    await db.pool.query(`SELECT hub.watch('votes', 'vote', columns => ARRAY['candidate'])`);
    try {
      const admin = await open({ token: await token({ sub: 'allow-admin', role: 'admin' }) });
      const g = await db.pool.query<{ id: string }>(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'Secret Voter') RETURNING id::text AS id`,
        [e1, c1],
      );
      const id = g.rows[0]?.id;
      await db.pool.query(`UPDATE guarantees SET voter_name = 'Another Secret', status = 'confirmed' WHERE id = $1`, [
        id,
      ]);
      await db.pool.query(`DELETE FROM guarantees WHERE id = $1`, [id]);
      await db.pool.query(`INSERT INTO votes (election_id, committee_id, candidate, count) VALUES ($1, $2, 'A', 3)`, [
        e1,
        c1,
      ]);
      await waitUntil(() => admin.events().length >= 4, 10_000, 'four events');
      const [created, updated, deleted, vote] = admin.events();
      for (const f of [created, updated, deleted]) {
        expect(f?.type).toBe('guarantee_update');
        expect(Object.keys(f?.data as object).sort()).toEqual(['committee_id', 'election_id', 'id', 'status']);
        expect(JSON.stringify(f)).not.toContain('Secret');
      }
      expect(updated).toMatchObject({ action: 'updated', data: { status: 'confirmed' } });
      expect(vote).toMatchObject({
        type: 'voting_update',
        data: { candidate: 'A', count: 3, election_id: e1, committee_id: c1 },
      });
      expect(Object.keys(vote?.data as object).sort()).toEqual([
        'candidate',
        'committee_id',
        'count',
        'election_id',
        'id',
      ]);
      // `old` (kept for snapshots) is cut the same way.
      const old = await db.pool.query<{ old: Record<string, unknown> }>(
        `SELECT old FROM hub.outbox WHERE kind = 'guarantee' AND action = 'updated' AND row_id = $1::jsonb`,
        [id],
      );
      expect(old.rows[0]?.old).toEqual({ id: Number(id), election_id: e1, committee_id: c1, status: 'pledged' });
      expect(
        (await db.pool.query(`SELECT 1 FROM hub.outbox WHERE data::text LIKE '%Secret%' OR old::text LIKE '%Secret%'`))
          .rowCount,
      ).toBe(0);
      // The watch remembers its columns (a later migration regenerates it with them).
      const w = await db.pool.query<{ columns: string[] | null }>(
        `SELECT columns FROM hub.watched WHERE tbl = 'guarantees'::regclass`,
      );
      expect(w.rows[0]?.columns).toEqual(['status']);
    } finally {
      await db.pool.query(`SELECT hub.watch('guarantees', 'guarantee'); SELECT hub.watch('votes', 'vote')`);
    }
  });

  it('refuses an unknown column, naming it, and leaves the watch as it was', async () => {
    await expect(
      db.pool.query(
        `SELECT hub.watch('guarantees', 'guarantee', columns => ARRAY['status', 'no_such_column', 'ctid'])`,
      ),
    ).rejects.toThrow(/hub\.watch: guarantees has no column no_such_column, ctid/);
    await expect(
      db.pool.query(`SELECT hub.watch('guarantees', 'guarantee', columns => ARRAY[NULL::text])`),
    ).rejects.toThrow(/has no column/);
    const w = await db.pool.query<{ columns: string[] | null }>(
      `SELECT columns FROM hub.watched WHERE tbl = 'guarantees'::regclass`,
    );
    expect(w.rows[0]?.columns).toBeNull();
  });

  it('reads integer ids typed and anything else through the safe cast: a malformed id never fails the write', async () => {
    await db.pool.query(`CREATE TABLE loose (id text PRIMARY KEY, eid text, cid jsonb, note text)`);
    await db.pool.query(`SELECT hub.watch('loose', 'loose', 'eid', 'cid')`);
    await db.pool.query(
      `INSERT INTO loose VALUES ('a', '007', '"${c1}"', 'x'), ('b', 'not a number', '1e3', 'y'), ('c', '99999999999999999999', 'null', 'z'), ('d', NULL, '{"x":1}', 'w')`,
    );
    const rows = await db.pool.query<{ e: string | null; c: string | null }>(
      `SELECT election_id::text e, committee_id::text c FROM hub.outbox WHERE kind = 'loose' ORDER BY id`,
    );
    expect(rows.rows).toEqual([
      { e: '7', c: String(c1) },
      { e: null, c: '1000' }, // jsonb 1e3 is the number 1000, as 002's to_jsonb(row) ->> read it
      { e: null, c: null },
      { e: null, c: null },
    ]);
  });
});

describe('ALTER TABLE of a watched table', () => {
  it('regenerates its capture: a changed column type or a renamed allowed column never fails the write', async () => {
    await db.pool.query(
      `CREATE TABLE altered (id bigint PRIMARY KEY, election_id int, committee_id int, note text, secret text)`,
    );
    await db.pool.query(`SELECT hub.watch('altered', 'altered', columns => ARRAY['note'])`);
    await db.pool.query(`ALTER TABLE altered ALTER COLUMN election_id TYPE text`);
    await db.pool.query(`INSERT INTO altered VALUES (1, 'not a number', 1, 'a', 's'), (2, '0042', 1, 'b', 's')`);
    await db.pool.query(`ALTER TABLE altered RENAME COLUMN note TO remark`);
    await db.pool.query(`INSERT INTO altered VALUES (3, '7', 1, 'c', 's')`);
    const rows = await db.pool.query<{ e: string | null; data: Record<string, unknown> }>(
      `SELECT election_id::text AS e, data FROM hub.outbox WHERE kind = 'altered' ORDER BY id`,
    );
    expect(rows.rows).toEqual([
      { e: null, data: { id: 1, election_id: 'not a number', committee_id: 1, note: 'a' } },
      { e: '42', data: { id: 2, election_id: '0042', committee_id: 1, note: 'b' } },
      // The allow-list named `note`: its renamed column is no longer allowed (never more than asked).
      { e: '7', data: { id: 3, election_id: '7', committee_id: 1 } },
    ]);
  });

  it('refuses to rename the election column under a watch, with a hint; drop the triggers, rename and watch again in one transaction', async () => {
    await db.pool.query(`CREATE TABLE renamed (id bigint PRIMARY KEY, election_id bigint, committee_id bigint)`);
    await db.pool.query(`SELECT hub.watch('renamed', 'renamed')`);
    await expect(db.pool.query(`ALTER TABLE renamed RENAME COLUMN election_id TO eid`)).rejects.toThrow(
      /watched with election column election_id/,
    );
    await db.pool.query(`INSERT INTO renamed VALUES (1, 5, 6)`); // still watched as it was
    await db.pool.query(`BEGIN;
      DROP TRIGGER hub_capture_insert ON renamed; DROP TRIGGER hub_capture_update ON renamed;
      DROP TRIGGER hub_capture_delete ON renamed; DROP TRIGGER hub_capture_truncate ON renamed;
      ALTER TABLE renamed RENAME COLUMN election_id TO eid;
      SELECT hub.watch('renamed', 'renamed', 'eid');
      COMMIT`);
    await db.pool.query(`INSERT INTO renamed VALUES (2, 8, 9)`);
    const rows = await db.pool.query<{ e: string }>(
      `SELECT election_id::text AS e FROM hub.outbox WHERE kind = 'renamed' ORDER BY id`,
    );
    expect(rows.rows.map((r) => r.e)).toEqual(['5', '8']);
  });
});

describe('ALTER TABLE of a watched table keeps the trigger state the operator set', () => {
  // hub_rewatch regenerates the capture (drops and re-creates the four triggers, sql/005): the
  // enabled state an ALTER TABLE set on them must survive it (sql/007_rewatch_trigger_state.sql).
  const ops = ['delete', 'insert', 'truncate', 'update'] as const;
  const states = async (tbl: string) =>
    Object.fromEntries(
      (
        await db.pool.query<{ n: string; s: string }>(
          `SELECT tgname AS n, tgenabled AS s FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname LIKE 'hub\\_capture\\_%' ORDER BY 1`,
          [tbl],
        )
      ).rows.map((r) => [r.n, r.s]),
    );
  const all = (s: string, but: Record<string, string> = {}) =>
    Object.fromEntries(ops.map((op) => [`hub_capture_${op}`, but[op] ?? s]));
  const captured = async (kind: string) =>
    (
      await db.pool.query<{ action: string; data: Record<string, unknown> }>(
        `SELECT action, data FROM hub.outbox WHERE kind = $1 ORDER BY id`,
        [kind],
      )
    ).rows;
  const table = async (name: string) => {
    await db.pool.query(
      `CREATE TABLE ${name} (id bigint PRIMARY KEY, election_id int, committee_id int, note text); SELECT hub.watch('${name}', '${name}')`,
    );
    expect(await states(name)).toEqual(all('O'));
  };

  it('DISABLE TRIGGER USER: every capture trigger stays disabled and an INSERT writes no outbox row', async () => {
    await table('sw_user');
    await db.pool.query(`ALTER TABLE sw_user DISABLE TRIGGER USER`);
    expect(await states('sw_user')).toEqual(all('D'));
    await db.pool.query(
      `INSERT INTO sw_user VALUES (1, 1, 1, 'a'); UPDATE sw_user SET note = 'b'; DELETE FROM sw_user`,
    );
    expect(await captured('sw_user')).toEqual([]);
    await db.pool.query(`ALTER TABLE sw_user ENABLE TRIGGER USER`);
    expect(await states('sw_user')).toEqual(all('O'));
    await db.pool.query(`INSERT INTO sw_user VALUES (2, 1, 1, 'c')`);
    expect((await captured('sw_user')).map((r) => r.action)).toEqual(['created']);
  });

  it('DISABLE TRIGGER hub_capture_insert: only that one is disabled; the others still capture', async () => {
    await table('sw_one');
    await db.pool.query(`ALTER TABLE sw_one DISABLE TRIGGER hub_capture_insert`);
    expect(await states('sw_one')).toEqual(all('O', { insert: 'D' }));
    await db.pool.query(`INSERT INTO sw_one VALUES (1, 1, 1, 'a'); UPDATE sw_one SET note = 'b'`);
    expect((await captured('sw_one')).map((r) => r.action)).toEqual(['updated']);
  });

  it('ENABLE ALWAYS TRIGGER hub_capture_update (and ENABLE REPLICA on another) stay as set', async () => {
    await table('sw_always');
    await db.pool.query(`ALTER TABLE sw_always ENABLE ALWAYS TRIGGER hub_capture_update`);
    expect(await states('sw_always')).toEqual(all('O', { update: 'A' }));
    await db.pool.query(`ALTER TABLE sw_always ENABLE REPLICA TRIGGER hub_capture_delete`);
    expect(await states('sw_always')).toEqual(all('O', { update: 'A', delete: 'R' }));
  });

  it('an ALTER that changes columns still regenerates the capture and keeps a disabled trigger disabled', async () => {
    await table('sw_cols');
    await db.pool.query(`ALTER TABLE sw_cols DISABLE TRIGGER hub_capture_insert`);
    // Without regeneration the function would still read election_id as an integer, and the
    // write of 'not a number' below would fail.
    await db.pool.query(`ALTER TABLE sw_cols ALTER COLUMN election_id TYPE text`);
    expect(await states('sw_cols')).toEqual(all('O', { insert: 'D' }));
    await db.pool.query(`ALTER TABLE sw_cols ADD COLUMN extra text, DISABLE TRIGGER hub_capture_update`);
    expect(await states('sw_cols')).toEqual(all('O', { insert: 'D', update: 'D' }));
    await db.pool.query(`INSERT INTO sw_cols VALUES (1, 'not a number', 1, 'a', 'x')`);
    expect(await captured('sw_cols')).toEqual([]);
    await db.pool.query(`ALTER TABLE sw_cols ENABLE TRIGGER hub_capture_insert, ENABLE TRIGGER hub_capture_update`);
    expect(await states('sw_cols')).toEqual(all('O'));
    await db.pool.query(`INSERT INTO sw_cols VALUES (2, 'junk', 1, 'b', 'y')`);
    expect(await captured('sw_cols')).toEqual([
      { action: 'created', data: { id: 2, election_id: 'junk', committee_id: 1, note: 'b', extra: 'y' } },
    ]);
  });

  it('several ALTERs in one transaction: each regenerates (the recursion guard does not outlive one), states kept', async () => {
    await table('sw_tx');
    await db.pool.query(`BEGIN;
      ALTER TABLE sw_tx DISABLE TRIGGER USER;
      ALTER TABLE sw_tx ALTER COLUMN election_id TYPE text;
      ALTER TABLE sw_tx ENABLE TRIGGER hub_capture_insert;
      COMMIT`);
    expect(await states('sw_tx')).toEqual(all('D', { insert: 'O' }));
    await db.pool.query(`INSERT INTO sw_tx VALUES (1, 'junk', 1, 'a'); UPDATE sw_tx SET note = 'b'`);
    expect((await captured('sw_tx')).map((r) => r.action)).toEqual(['created']);
  });

  it('an explicit hub.watch by the operator re-creates the triggers enabled, as it always did', async () => {
    await table('sw_watch');
    await db.pool.query(`ALTER TABLE sw_watch DISABLE TRIGGER USER`);
    await db.pool.query(`SELECT hub.watch('sw_watch', 'sw_watch')`);
    expect(await states('sw_watch')).toEqual(all('O'));
  });
});

describe('TRUNCATE of a watched table', () => {
  it('reaches admins on election:* as <kind>_update "truncated", not other sockets', async () => {
    const admin = await open({ token: await token({ sub: 'trunc-admin', role: 'admin' }) });
    const viewer = await open({ token: await token({ sub: 'trunc-viewer', elections: [e1] }) });
    await db.pool.query(`INSERT INTO attendance (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    await db.pool.query(`TRUNCATE attendance`);
    await db.pool.query(`SELECT hub.publish($1, 'marker', '{}')`, [`election:${e1}`]);
    const truncated = await admin.next((f) => f.action === 'truncated');
    expect(truncated).toMatchObject({
      type: 'attendance_update',
      action: 'truncated',
      election_id: null,
      committee_id: null,
      id: null,
      data: { table: 'public.attendance' },
    });
    expect(typeof truncated.cursor).toBe('string');
    await viewer.next((f) => f.type === 'marker');
    expect(viewer.events().map((f) => f.action ?? f.type)).toEqual(['created', 'marker']);
  });

  it('makes cached dashboards stale: GET /dashboard/{id} and dashboard_update show the new totals', async () => {
    const bearer = await token({ sub: 'trunc-dash', elections: [e1] });
    await db.pool.query(`INSERT INTO attendance (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, 5)`, [
      e1,
      c1,
    ]);
    await waitUntil(
      async () => (await get(`/dashboard/${e1}`, bearer)).body.totals?.attendance === 5,
      10_000,
      'five attendance rows on the dashboard',
    );
    expect((await get(`/dashboard/${e1}`, bearer)).body.totals?.attendance).toBe(5); // now cached
    const viewer = await open({ token: bearer });
    const admin = await open({ token: await token({ sub: 'trunc-dash-admin', role: 'admin' }) });
    await db.pool.query(`TRUNCATE attendance`);
    await admin.next((f) => f.action === 'truncated');
    // The hub has read the TRUNCATE: a snapshot cut before it must not be served any more.
    expect((await get(`/dashboard/${e1}`, bearer)).body.totals?.attendance).toBe(0);
    const update = await viewer.next(
      (f) => f.type === 'dashboard_update' && (f.totals as { attendance: number }).attendance === 0,
    );
    expect(update).toMatchObject({ election_id: e1 });
  });
});

/** Migrates with only these hub files of sql/ (an older version of the hub), and the reference schema. */
/** The hub's migrations in order, up to and including `last`. */
const hubFilesUpTo = (last: string) => {
  const all = readdirSync(path.join(root, 'sql'))
    .filter((f) => /^\d{3}_.*\.sql$/.test(f))
    .sort();
  return all.slice(0, all.indexOf(last) + 1);
};

const migrateOnly = async (url: string, files: string[]) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hub-sql-old-'));
  try {
    mkdirSync(path.join(dir, 'reference'));
    for (const f of [...files, 'reference/001_reference_schema.sql', 'reference/003_watch_reference.sql']) {
      copyFileSync(path.join(root, 'sql', f), path.join(dir, f));
    }
    await migrate(url, { dir, referenceSchema: true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

describe('watches made before 005', () => {
  it('are regenerated by the migration: same events as 002 captured, plus TRUNCATE', async () => {
    const d = await createTestDatabase('hub_capture_old', { schema: 'none' });
    dbs.push(d);
    // The hub as it was before 005: 002 and 004, the reference schema watched by 002's hub.watch.
    await migrateOnly(d.url, ['002_hub_outbox.sql', '004_ids_and_topics.sql']);
    await d.pool.query(
      `CREATE TABLE custom (pk bigint PRIMARY KEY, eid text, cid int, body text); SELECT hub.watch('custom', 'custom', 'eid', 'cid')`,
    );
    const triggers = async () =>
      (
        await d.pool.query<{ t: string }>(
          `SELECT tgrelid::regclass::text || '.' || tgname AS t FROM pg_trigger WHERE tgname LIKE 'hub_capture%' ORDER BY 1`,
        )
      ).rows.map((r) => r.t);
    expect(await triggers()).toHaveLength(12);

    const statements = async (base: number) => {
      await d.pool.query(`DELETE FROM custom; TRUNCATE hub.outbox`);
      await d.pool.query(
        `INSERT INTO guarantees (id, election_id, committee_id, voter_name) VALUES (${base}, 1, 2, 'a'), (${base + 1}, 3, 4, 'b');
         UPDATE guarantees SET voter_name = 'c', committee_id = 5 WHERE id IN (${base}, ${base + 1});
         UPDATE guarantees SET id = ${base + 2} WHERE id = ${base + 1};
         DELETE FROM guarantees WHERE id IN (${base}, ${base + 2});
         INSERT INTO votes (id, election_id, committee_id, count) VALUES (${base}, 1, 2, 5);
         UPDATE votes SET count = 6 WHERE id = ${base};
         INSERT INTO custom VALUES (${base}, '0042', 7, 'x'), (${base + 1}, 'junk', 8, 'y');
         UPDATE custom SET body = 'z'`,
      );
      const rows = await d.pool.query(
        `SELECT kind, action, election_id::text, committee_id::text, row_id::text, (data::jsonb - 'updated_at')::text AS data, (old::jsonb - 'updated_at')::text AS old
         FROM hub.outbox ORDER BY id`,
      );
      return JSON.stringify(rows.rows)
        .replaceAll(String(base), 'B')
        .replaceAll(String(base + 1), 'B1')
        .replaceAll(String(base + 2), 'B2');
    };
    const before = await statements(1000);

    const r = await migrate(d.url, { referenceSchema: true });
    expect(r.applied).toContain('005_capture.sql');
    expect(await triggers()).toEqual(
      ['attendance', 'custom', 'guarantees', 'votes'].flatMap((t) =>
        ['delete', 'insert', 'truncate', 'update'].map((op) => `${t}.hub_capture_${op}`),
      ),
    );
    expect((await d.pool.query(`SELECT to_regprocedure('hub.capture()') IS NULL AS gone`)).rows[0]).toEqual({
      gone: true,
    });
    expect(await statements(2000)).toBe(before);

    await d.pool.query(`TRUNCATE custom`);
    const t = await d.pool.query(`SELECT kind, action, election_id, data FROM hub.outbox WHERE action = 'truncated'`);
    expect(t.rows).toEqual([
      { kind: 'custom', action: 'truncated', election_id: null, data: { table: 'public.custom' } },
    ]);
    // Still one hub.watch (a second signature would make the short call ambiguous).
    await expect(d.pool.query(`SELECT hub.watch('custom', 'custom', 'eid', 'cid')`)).resolves.toBeDefined();
  });
});

describe('008: rows kept as json', () => {
  it('the migration keeps the rows already there, their order and the triggers an operator disabled; new rows are compact text', async () => {
    const d = await createTestDatabase('hub_json_payloads', { schema: 'none' });
    dbs.push(d);
    await migrateOnly(d.url, hubFilesUpTo('007_rewatch_trigger_state.sql'));
    await d.pool.query(`INSERT INTO guarantees (id, election_id, committee_id, voter_name) VALUES (1, 1, 2, 'Before')`);
    await d.pool.query(`UPDATE guarantees SET status = 'confirmed' WHERE id = 1`);
    await d.pool.query(`ALTER TABLE attendance DISABLE TRIGGER hub_capture_insert`);
    const rowsInOrder = async () =>
      // (Keys are given by hub.sequence from 009 on; before it, at COMMIT.)
      (await d.pool.query(
        `DO $$ BEGIN IF to_regproc('hub.sequence') IS NOT NULL THEN PERFORM hub.sequence(); END IF; END $$`,
      ),
      await d.pool.query<{ seq: string; action: string; data: Record<string, unknown>; old: unknown }>(
        `SELECT seq::text, action, data, old FROM hub.outbox_in_order ORDER BY seq, id`,
      )).rows.map((r) => ({ ...r, data: { ...r.data, updated_at: 'T' } }));
    const before = await rowsInOrder();
    expect(before.map((r) => r.action)).toEqual(['created', 'updated']);

    const r = await migrate(d.url, { referenceSchema: true });
    expect(r.applied).toEqual([
      '008_json_payloads.sql',
      '009_sequencer.sql',
      '010_sequence_in_write_order.sql',
      '011_sequence_and_read.sql',
      '012_async_keys_and_restarts.sql',
      '013_reader_plans.sql',
      '014_pages_without_the_lock.sql',
    ]);
    const types = await d.pool.query<{ column_name: string; data_type: string }>(
      `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'hub' AND table_name = 'outbox'
         AND column_name IN ('data', 'old', 'row_id') ORDER BY column_name`,
    );
    expect(types.rows).toEqual([
      { column_name: 'data', data_type: 'json' },
      { column_name: 'old', data_type: 'json' },
      { column_name: 'row_id', data_type: 'jsonb' },
    ]);
    expect(await rowsInOrder()).toEqual(before);
    const enabled = await d.pool.query<{ t: string; e: string }>(
      `SELECT tgname AS t, tgenabled AS e FROM pg_trigger WHERE tgrelid = 'attendance'::regclass AND tgname LIKE 'hub_capture%' ORDER BY 1`,
    );
    expect(enabled.rows).toEqual([
      { t: 'hub_capture_delete', e: 'O' },
      { t: 'hub_capture_insert', e: 'D' },
      { t: 'hub_capture_truncate', e: 'O' },
      { t: 'hub_capture_update', e: 'O' },
    ]);

    await d.pool.query(`INSERT INTO attendance (election_id, committee_id) VALUES (1, 2)`); // not captured
    await d.pool.query(`INSERT INTO guarantees (id, election_id, committee_id, voter_name) VALUES (2, 1, 2, 'After')`);
    await d.pool.query(`INSERT INTO votes (id, election_id, committee_id, candidate, count) VALUES (3, 1, 2, 'X', 7)`);
    const fresh = await d.pool.query<{ kind: string; data: string }>(
      `SELECT kind, data::text AS data FROM hub.outbox WHERE row_id::text IN ('2', '3') ORDER BY id`,
    );
    expect(fresh.rows.map((f) => [f.kind, f.data.replace(/"updated_at":"[^"]+"/, '"updated_at":"T"')])).toEqual([
      [
        'guarantee',
        '{"id":2,"election_id":1,"committee_id":2,"voter_name":"After","status":"pledged","updated_at":"T"}',
      ],
      ['vote', '{"id":3,"election_id":1,"committee_id":2,"candidate":"X","count":7}'],
    ]);
    expect((await d.pool.query(`SELECT count(*)::int AS n FROM hub.outbox WHERE kind = 'attendance'`)).rows[0]).toEqual(
      { n: 0 },
    );
  });
});

describe('009: keys given after the commit', () => {
  it('a reader on a schema without 009 says what is missing; after the migration the keys go on from 006’s, in one order', async () => {
    const d = await createTestDatabase('hub_seq_upgrade', { schema: 'none' });
    try {
      await migrateOnly(d.url, hubFilesUpTo('008_json_payloads.sql'));
      const reader = startReader({
        pool: d.pool,
        log: createLogger('silent'),
        onEvents: () => undefined,
        onStarted: () => undefined,
      });
      try {
        await waitUntil(() => reader.failure() !== undefined, 10_000, 'the read to fail');
        expect(reader.failure()?.error).toMatch(/hub\.sequence\(\) is missing: .*009_sequencer\.sql.*migrate/);
      } finally {
        await reader.stop();
      }
      const add = (name: string) =>
        d.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (1, 2, $1)`, [name]);
      await add('keyed at commit (006)');
      expect((await migrate(d.url, { referenceSchema: true })).applied).toEqual([
        '009_sequencer.sql',
        '010_sequence_in_write_order.sql',
        '011_sequence_and_read.sql',
        '012_async_keys_and_restarts.sql',
        '013_reader_plans.sql',
        '014_pages_without_the_lock.sql',
      ]);
      await add('keyed after it (009)');
      await d.pool.query('SELECT hub.sequence()');
      const rows = (
        await d.pool.query<{ s: string; n: string }>(
          `SELECT seq::text s, data->>'voter_name' n FROM hub.outbox_in_order ORDER BY seq, id`,
        )
      ).rows;
      expect(rows.map((r) => r.n)).toEqual(['keyed at commit (006)', 'keyed after it (009)']);
      expect(BigInt(rows[1]?.s ?? '0')).toBe(BigInt(rows[0]?.s ?? '0') + 1n);
      // Nothing of 006's key machinery is left for writers to pay.
      const left = await d.pool.query<{ n: number }>(
        `SELECT (SELECT count(*) FROM pg_trigger WHERE tgname IN ('hub_commit_mark', 'hub_commit_key'))::int
              + (SELECT count(*) FROM pg_class WHERE oid IN (to_regclass('hub.commit_marks'), to_regclass('hub.commit_seq')))::int AS n`,
      );
      expect(left.rows[0]?.n).toBe(0);
    } finally {
      await d.drop();
    }
  });

  it('a reader on a schema with 010 but without 011 says what is missing, and reads once it is applied', async () => {
    const d = await createTestDatabase('hub_page_upgrade', { schema: 'none' });
    try {
      await migrateOnly(d.url, hubFilesUpTo('010_sequence_in_write_order.sql'));
      const read: string[] = [];
      const reader = startReader({
        pool: d.pool,
        log: createLogger('silent'),
        backstopMs: 50,
        onEvents: (events) => read.push(...events.map((e) => e.type)),
        onStarted: () => undefined,
      });
      try {
        await waitUntil(() => reader.failure() !== undefined, 10_000, 'the read to fail');
        expect(reader.failure()?.error).toMatch(/hub\.next_page\(\) is missing: .*011_sequence_and_read\.sql.*migrate/);
        expect((await migrate(d.url, { referenceSchema: true })).applied).toEqual([
          '011_sequence_and_read.sql',
          '012_async_keys_and_restarts.sql',
          '013_reader_plans.sql',
          '014_pages_without_the_lock.sql',
        ]);
        await d.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES (1, 2)`);
        await waitUntil(() => read.length > 0, 15_000, 'the row to be read');
        expect(read).toEqual(['guarantee_update']);
      } finally {
        await reader.stop();
      }
    } finally {
      await d.drop();
    }
  });
});
