import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import { createTestDatabase, type TestDatabase } from './support/db.ts';
import { migrate } from '../src/db/migrate.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

let db: TestDatabase;
const run = (args: string[], env: Record<string, string | undefined>) =>
  spawnSync(process.execPath, ['bin/election-hub.mjs', ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    timeout: 30_000,
  });

beforeAll(async () => {
  db = await createTestDatabase('hub_cli');
});
afterAll(async () => db?.drop());

const schemaFingerprint = async () =>
  (
    await db.pool.query<{ f: string }>(
      `SELECT string_agg(x, ',' ORDER BY x) f FROM (
         SELECT 'c:' || table_schema || '.' || table_name || '.' || column_name AS x FROM information_schema.columns WHERE table_schema IN ('public', 'hub')
         UNION ALL SELECT 't:' || tgname FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL SELECT 'm:' || name || applied_at::text FROM hub.migrations) s`,
    )
  ).rows[0]?.f;

describe('election-hub CLI', () => {
  it('migrate is idempotent: a second run changes nothing', async () => {
    // createTestDatabase already migrated once (with the reference schema); run the command twice more.
    const before = await schemaFingerprint();
    const first = run(['migrate'], { DATABASE_URL: db.url });
    expect(first.status).toBe(0);
    expect(first.stdout).toMatch(/nothing to apply/);
    const second = run(['migrate'], { DATABASE_URL: db.url });
    expect(second.status).toBe(0);
    expect(await schemaFingerprint()).toBe(before);
  });

  it('migrate --reference-schema is idempotent too', async () => {
    const before = await schemaFingerprint();
    const r = run(['migrate', '--reference-schema'], { DATABASE_URL: db.url });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/nothing to apply/);
    expect(await schemaFingerprint()).toBe(before);
  });
});

// CONTRACT section 1: `migrate` applies only the hub schema; the reference schema is the demo's and the tests'.
describe('election-hub migrate on a production database', () => {
  const dbs: TestDatabase[] = [];
  const fresh = async () => {
    const d = await createTestDatabase('hub_cli_prod', { schema: 'none' });
    dbs.push(d);
    return d;
  };
  afterAll(async () => {
    for (const d of dbs) await d.drop();
  });
  const publicTables = async (d: TestDatabase) =>
    (
      await d.pool.query<{ t: string }>(
        `SELECT table_name t FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`,
      )
    ).rows.map((r) => r.t);
  const triggersOn = async (d: TestDatabase, table: string) =>
    (
      await d.pool.query<{ t: string }>(
        `SELECT tgname t FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal ORDER BY 1`,
        [table],
      )
    ).rows.map((r) => r.t);
  const applied = (stdout: string) => /^applied (.*) to /m.exec(stdout)?.[1]?.split(', ') ?? [];

  it('on an empty database creates the hub schema and no application table', async () => {
    const d = await fresh();
    const r = run(['migrate'], { DATABASE_URL: d.url });
    expect(r.status, r.stderr).toBe(0);
    expect(applied(r.stdout)).toContain('002_hub_outbox.sql');
    expect(applied(r.stdout).filter((f) => /reference/.test(f))).toEqual([]);
    expect(await publicTables(d)).toEqual([]);
    expect((await d.pool.query('SELECT 1 FROM hub.watched')).rowCount).toBe(0);
    expect((await d.pool.query(`SELECT to_regproc('hub.watch') IS NOT NULL AS ok`)).rows[0]).toEqual({ ok: true });
  });

  it('installs no trigger on an existing table called guarantees (nor attendance, votes)', async () => {
    const d = await fresh();
    // The application's own tables, which merely share the reference names.
    await d.pool
      .query(`CREATE TABLE guarantees (id bigint PRIMARY KEY, election_id bigint, committee_id bigint, pledge text);
      CREATE TABLE votes (id bigint PRIMARY KEY, election_id bigint, committee_id bigint, n int)`);
    const r = run(['migrate'], { DATABASE_URL: d.url });
    expect(r.status, r.stderr).toBe(0);
    expect(await triggersOn(d, 'guarantees')).toEqual([]);
    expect(await triggersOn(d, 'votes')).toEqual([]);
    expect(await publicTables(d)).toEqual(['guarantees', 'votes']);
    await d.pool.query(`INSERT INTO guarantees VALUES (1, 1, 1, 'x')`);
    expect((await d.pool.query('SELECT 1 FROM hub.outbox')).rowCount).toBe(0);

    // Asked for explicitly, the reference schema does watch them.
    const ref = run(['migrate', '--reference-schema'], { DATABASE_URL: d.url });
    expect(ref.status, ref.stderr).toBe(0);
    expect(applied(ref.stdout)).toEqual(['001_reference_schema.sql', '003_watch_reference.sql']);
    expect(await triggersOn(d, 'guarantees')).toEqual([
      'hub_capture_delete',
      'hub_capture_insert',
      'hub_capture_truncate',
      'hub_capture_update',
    ]);
  });

  it('--reference-schema on an empty database creates the reference tables, watched, after the hub schema', async () => {
    const d = await fresh();
    const r = run(['migrate', '--reference-schema'], { DATABASE_URL: d.url });
    expect(r.status, r.stderr).toBe(0);
    const files = applied(r.stdout);
    expect(files.slice(-2)).toEqual(['001_reference_schema.sql', '003_watch_reference.sql']);
    expect(files.indexOf('002_hub_outbox.sql')).toBe(0);
    expect(await publicTables(d)).toEqual(['attendance', 'committees', 'elections', 'guarantees', 'votes']);
    const watched = await d.pool.query<{ kind: string }>('SELECT kind FROM hub.watched ORDER BY kind');
    expect(watched.rows.map((w) => w.kind)).toEqual(['attendance', 'guarantee', 'vote']);
  });

  it('keeps an installation migrated before the split working: nothing re-applied, nothing refused', async () => {
    const d = await fresh();
    // The old layout: every file in one folder, applied in name order (001 reference, 002 hub, 003 watches).
    const flat = mkdtempSync(path.join(tmpdir(), 'hub-sql-flat-'));
    try {
      for (const f of [
        'reference/001_reference_schema.sql',
        '002_hub_outbox.sql',
        'reference/003_watch_reference.sql',
      ]) {
        copyFileSync(path.join(root, 'sql', f), path.join(flat, path.basename(f)));
      }
      expect((await migrate(d.url, { dir: flat })).applied).toEqual([
        '001_reference_schema.sql',
        '002_hub_outbox.sql',
        '003_watch_reference.sql',
      ]);
    } finally {
      rmSync(flat, { recursive: true, force: true });
    }
    const before = await triggersOn(d, 'guarantees');
    expect(before).toHaveLength(3);
    for (const args of [['migrate'], ['migrate', '--reference-schema']]) {
      const r = run(args, { DATABASE_URL: d.url });
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      // Hub migrations added since may apply; the recorded reference files are never re-run.
      expect(
        applied(r.stdout).filter((f) =>
          ['001_reference_schema.sql', '002_hub_outbox.sql', '003_watch_reference.sql'].includes(f),
        ),
      ).toEqual([]);
    }
    // 005 regenerated the watch the old layout made (and added its TRUNCATE trigger).
    expect(await triggersOn(d, 'guarantees')).toEqual([...before, 'hub_capture_truncate'].sort());
    expect(await publicTables(d)).toEqual(['attendance', 'committees', 'elections', 'guarantees', 'votes']);
  });
});

describe('election-hub CLI commands', () => {
  it('bad configuration exits 2 before listening, listing every offending variable', () => {
    const r = run(['serve'], {
      DATABASE_URL: 'mysql://nope',
      JWT_SECRET: 'short',
      PORT: 'eighty',
      MAX_PAYLOAD_BYTES: '-1',
      LOG_LEVEL: 'loud',
    });
    expect(r.status).toBe(2);
    for (const name of ['DATABASE_URL', 'JWT_SECRET', 'PORT', 'MAX_PAYLOAD_BYTES', 'LOG_LEVEL'])
      expect(r.stderr).toContain(name);
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // a list, not a stack trace
    const missing = run(['serve'], {});
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/DATABASE_URL: required/);
    expect(missing.stderr).toMatch(/one key source is required/);
    // Metrics have their own listener: on the public port they would be public.
    const same = run(['serve'], {
      DATABASE_URL: db.url,
      JWT_SECRET: 'x'.repeat(40),
      PORT: '9000',
      METRICS_PORT: '9000',
    });
    expect(same.status).toBe(2);
    expect(same.stderr).toMatch(/METRICS_PORT: must differ from PORT \(9000\)/);
    expect(run(['serve'], { DATABASE_URL: db.url, JWT_SECRET: 'x'.repeat(40), METRICS_PORT: '70000' }).stderr).toMatch(
      /METRICS_PORT/,
    );
  });

  it('token prints an HS256 token with the requested claims', () => {
    const r = run(
      ['token', '--sub', 'ana', '--role', 'observer', '--elections', '1,2', '--committees', '7', '--ttl', '2h'],
      {
        JWT_SECRET: 'x'.repeat(40),
      },
    );
    expect(r.status).toBe(0);
    const claims = decodeJwt(r.stdout.trim());
    expect(claims).toMatchObject({ sub: 'ana', role: 'observer', elections: [1, 2], committees: [7] });
    expect(Number(claims.exp) - Number(claims.iat)).toBe(7200);
    expect(run(['token', '--sub', 'x'], { JWT_SECRET: 'short' }).status).toBe(2);
    expect(run(['token', '--sub', 'x', '--elections', 'a,b'], { JWT_SECRET: 'x'.repeat(40) }).status).toBe(2);
    expect(run(['frobnicate'], {}).status).toBe(2);
  });
});
