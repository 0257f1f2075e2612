import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.ts';

export type BenchDatabase = { url: string; name: string; drop(): Promise<void> };

/** Databases created here and not dropped yet (`dropBenchDatabases` drops them on the way out). */
const undropped = new Set<BenchDatabase>();

/** Drops every bench database this process created and has not dropped (cleanup on failure or Ctrl-C). */
export async function dropBenchDatabases(): Promise<void> {
  await Promise.all([...undropped].map((d) => d.drop()));
}

/** A fresh database with the hub and the reference schema applied; `drop` removes it (even with sessions left). */
export async function createBenchDatabase(adminUrl: string): Promise<BenchDatabase> {
  const name = `hub_bench_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  const url = u.toString();
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    undropped.delete(db);
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    try {
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    } finally {
      await c.end();
    }
  };
  const db: BenchDatabase = { url, name, drop };
  undropped.add(db);
  try {
    await migrate(url, { referenceSchema: true });
  } catch (err) {
    await drop();
    throw err;
  }
  return db;
}

/**
 * SQL that enables or disables `triggers` (`USER`: all but the internal ones; or one name) on a
 * table, leaving the capture as it is otherwise. Run under session_replication_role = replica
 * (where the role may set it: a superuser, the only one who has event triggers), so that
 * sql/005's hub_rewatch event trigger does not fire: on any ALTER TABLE of a watched table it
 * regenerates the capture, which would turn disabled capture triggers back on.
 */
export function setTriggersSql(table: string, enabled: boolean, triggers = 'USER'): string {
  return `DO $$ BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN SET session_replication_role = replica; END IF; END $$;
ALTER TABLE ${table} ${enabled ? 'ENABLE' : 'DISABLE'} TRIGGER ${triggers}; RESET session_replication_role`;
}

/** Committee `k` (1-based) of election `e` has id (e-1)*perElection + k. */
export const committeeId = (election: number, k: number, perElection: number) => (election - 1) * perElection + k;

/** Elections 1..elections, each with `perElection` committees, ids as `committeeId` says. */
export async function seed(url: string, elections: number, perElection: number): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(`INSERT INTO elections (id, name) SELECT g, 'Election ' || g FROM generate_series(1, $1::int) g`, [
      elections,
    ]);
    await c.query(
      `INSERT INTO committees (id, election_id, name)
       SELECT (e - 1) * $2::int + k, e, 'Committee ' || e || '.' || k FROM generate_series(1, $1::int) e, generate_series(1, $2::int) k`,
      [elections, perElection],
    );
    // The NOTIFY baseline's probes are written here: a write transaction like the hub's probes, not captured.
    await c.query(
      'CREATE TABLE bench_notify_probe (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stamp text NOT NULL)',
    );
    await c.query('ANALYZE');
  } finally {
    await c.end();
  }
}

/**
 * `n` captured one-row transactions written by one session (`c`, left as it was), as history an
 * election night keeps within the retention: a guarantee each, in `spot`. With `keyed`, keys are
 * given every 5 000 and at the end, as a running hub would, and the tables are analyzed; without,
 * the rows wait unkeyed and unanalyzed (what a hub finds after a burst it did not see).
 */
export async function writeHistory(
  c: Pick<pg.Client, 'query'>,
  n: number,
  spot: { election: number; committee: number },
  keyed: boolean,
): Promise<void> {
  await c.query('SET synchronous_commit = off');
  try {
    await c.query(`DO $$ BEGIN
      FOR i IN 1..${n} LOOP
        INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (${spot.election}, ${spot.committee}, 'history');
        COMMIT;
        ${keyed ? 'IF i % 5000 = 0 THEN PERFORM hub.sequence(true, 5000); COMMIT; END IF;' : ''}
      END LOOP; END $$`);
  } finally {
    await c.query('RESET synchronous_commit');
  }
  if (keyed) {
    await c.query('SELECT hub.sequence(true, 5000)');
    await c.query('ANALYZE hub.commits, hub.outbox');
  }
}

export async function serverVersion(url: string): Promise<string> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ v: string }>(`SELECT current_setting('server_version') AS v`);
    const s = await c.query<{ name: string; setting: string }>(
      `SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')`,
    );
    return `PostgreSQL ${r.rows[0]?.v ?? '?'} (${s.rows.map((x) => `${x.name}=${x.setting}`).join(', ')})`;
  } finally {
    await c.end();
  }
}
