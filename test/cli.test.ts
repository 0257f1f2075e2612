import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import { createTestDatabase, type TestDatabase } from './support/db.ts';

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
    // createTestDatabase already migrated once; run the command twice more.
    const before = await schemaFingerprint();
    const first = run(['migrate'], { DATABASE_URL: db.url });
    expect(first.status).toBe(0);
    expect(first.stdout).toMatch(/nothing to apply/);
    const second = run(['migrate'], { DATABASE_URL: db.url });
    expect(second.status).toBe(0);
    expect(await schemaFingerprint()).toBe(before);
  });

  it('migrate applies everything to an empty database', async () => {
    await db.pool.query('DROP SCHEMA hub CASCADE; DROP TABLE votes, attendance, guarantees, committees, elections');
    const r = run(['migrate'], { DATABASE_URL: db.url });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/applied 001_reference_schema\.sql, 002_hub_outbox\.sql, 003_watch_reference\.sql/);
    const watched = await db.pool.query<{ kind: string }>('SELECT kind FROM hub.watched ORDER BY kind');
    expect(watched.rows.map((r) => r.kind)).toEqual(['attendance', 'guarantee', 'vote']);
  });

  it('bad configuration exits 2 before listening, listing every offending variable', () => {
    const r = run(['serve'], { DATABASE_URL: 'mysql://nope', JWT_SECRET: 'short', PORT: 'eighty', MAX_PAYLOAD_BYTES: '-1', LOG_LEVEL: 'loud' });
    expect(r.status).toBe(2);
    for (const name of ['DATABASE_URL', 'JWT_SECRET', 'PORT', 'MAX_PAYLOAD_BYTES', 'LOG_LEVEL']) expect(r.stderr).toContain(name);
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // a list, not a stack trace
    const missing = run(['serve'], {});
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/DATABASE_URL: required/);
    expect(missing.stderr).toMatch(/one key source is required/);
  });

  it('token prints an HS256 token with the requested claims', () => {
    const r = run(['token', '--sub', 'ana', '--role', 'observer', '--elections', '1,2', '--committees', '7', '--ttl', '2h'], {
      JWT_SECRET: 'x'.repeat(40),
    });
    expect(r.status).toBe(0);
    const claims = decodeJwt(r.stdout.trim());
    expect(claims).toMatchObject({ sub: 'ana', role: 'observer', elections: [1, 2], committees: [7] });
    expect(Number(claims.exp) - Number(claims.iat)).toBe(7200);
    expect(run(['token', '--sub', 'x'], { JWT_SECRET: 'short' }).status).toBe(2);
    expect(run(['token', '--sub', 'x', '--elections', 'a,b'], { JWT_SECRET: 'x'.repeat(40) }).status).toBe(2);
    expect(run(['frobnicate'], {}).status).toBe(2);
  });
});
