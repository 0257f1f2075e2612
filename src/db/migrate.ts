import { readFile, readdir } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { wrapError } from '../errors.ts';

const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));
// Serializes concurrent migrators (several hubs starting at once, compose's migrate service).
const LOCK_KEY = 7_340_112_001;

export type MigrateResult = { applied: string[]; skipped: string[] };

/**
 * Applies `sql/NNN_*.sql` in order, each in its own transaction, recording it in
 * `hub.migrations`. Idempotent: a second run applies nothing. A file whose content changed
 * after it was applied is refused rather than silently re-run.
 */
export async function migrate(databaseUrl: string, dir = SQL_DIR): Promise<MigrateResult> {
  const files = (await readdir(dir)).filter((f) => /^\d+_.*\.sql$/.test(f)).sort();
  const client = new pg.Client({ connectionString: databaseUrl });
  client.on('error', () => undefined); // a dropped connection surfaces as a failed query below
  await client.connect();
  const result: MigrateResult = { applied: [], skipped: [] };
  try {
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
    await client.query(`SET client_min_messages = warning;
      CREATE SCHEMA IF NOT EXISTS hub;
      CREATE TABLE IF NOT EXISTS hub.migrations (
        name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = new Map(
      (await client.query<{ name: string; checksum: string }>('SELECT name, checksum FROM hub.migrations')).rows.map((r) => [r.name, r.checksum]),
    );
    for (const file of files) {
      const sql = await readFile(dir + file, 'utf8');
      const checksum = createHash('sha256').update(sql).digest('hex');
      const prior = done.get(file);
      if (prior !== undefined) {
        if (prior !== checksum) throw new Error(`migration ${file} changed after it was applied; add a new migration instead`);
        result.skipped.push(file);
        continue;
      }
      try {
        await client.query('BEGIN');
        await client.query(sql);
        await client.query('INSERT INTO hub.migrations (name, checksum) VALUES ($1, $2)', [file, checksum]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw wrapError(`migration ${file} failed: ${(err as Error).message}`, err);
      }
      result.applied.push(file);
    }
    return result;
  } finally {
    await client.end().catch(() => undefined);
  }
}
