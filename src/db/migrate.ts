import { readFile, readdir } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { wrapError } from '../errors.ts';

const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));
// Serializes concurrent migrators (several hubs starting at once, compose's migrate service).
const LOCK_KEY = 7_340_112_001;

export type MigrateResult = { applied: string[]; skipped: string[] };

export type MigrateOptions = {
  /**
   * Also apply the reference schema (`sql/reference/`: the demo's elections, committees,
   * guarantees, attendance and votes tables, watched as guarantee/attendance/vote). For the
   * demo and the tests only: on a production database it would create application tables and
   * install capture triggers on any existing table of those names.
   */
  referenceSchema?: boolean;
  /** The migrations folder (hub files `NNN_*.sql`, reference files in its `reference/`). */
  dir?: string;
};

type Migration = { name: string; file: string };

const migrationsIn = async (dir: string): Promise<Migration[]> => {
  const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  return names
    .filter((f) => /^\d+_.*\.sql$/.test(f))
    .sort()
    .map((name) => ({ name, file: path.join(dir, name) }));
};

/**
 * Applies the `hub` schema (`sql/NNN_*.sql`) in order, and with `referenceSchema` then the
 * reference schema (`sql/reference/NNN_*.sql`), each file in its own transaction, recorded by
 * file name in `hub.migrations`. Idempotent: a second run applies nothing. A file whose content
 * changed after it was applied is refused rather than silently re-run.
 *
 * The two sequences are independent: hub files always run first, so a reference file always
 * meets the newest `hub.watch`, and a hub file added later applies on its own whether or not
 * the reference schema was ever applied. Installations migrated before the split recorded the
 * reference files (001, 003) under the same names with the same content: they stay recorded,
 * are skipped by `--reference-schema`, and are never touched by a plain `migrate`.
 */
export async function migrate(databaseUrl: string, opts: MigrateOptions = {}): Promise<MigrateResult> {
  const dir = opts.dir ?? SQL_DIR;
  const hubFiles = await migrationsIn(dir);
  const referenceFiles = opts.referenceSchema ? await migrationsIn(path.join(dir, 'reference')) : [];
  if (opts.referenceSchema && referenceFiles.length === 0)
    throw new Error(`no reference schema in ${path.join(dir, 'reference')}`);
  // Names are the record in hub.migrations: one name, one file, across both folders.
  const clash = hubFiles.find((h) => referenceFiles.some((r) => r.name === h.name));
  if (clash) throw new Error(`migration ${clash.name} exists both in sql/ and sql/reference/`);

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
      (await client.query<{ name: string; checksum: string }>('SELECT name, checksum FROM hub.migrations')).rows.map(
        (r) => [r.name, r.checksum],
      ),
    );
    for (const { name, file } of [...hubFiles, ...referenceFiles]) {
      const sql = await readFile(file, 'utf8');
      const checksum = createHash('sha256').update(sql).digest('hex');
      const prior = done.get(name);
      if (prior !== undefined) {
        if (prior !== checksum)
          throw new Error(`migration ${name} changed after it was applied; add a new migration instead`);
        result.skipped.push(name);
        continue;
      }
      try {
        await client.query('BEGIN');
        await client.query(sql);
        await client.query('INSERT INTO hub.migrations (name, checksum) VALUES ($1, $2)', [name, checksum]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw wrapError(`migration ${name} failed: ${(err as Error).message}`, err);
      }
      result.applied.push(name);
    }
    return result;
  } finally {
    await client.end().catch(() => undefined);
  }
}
