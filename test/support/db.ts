import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { migrate } from '../../src/db/migrate.ts';

export type TestDatabase = { url: string; pool: pg.Pool; drop(): Promise<void> };

/**
 * The application's own deferred constraint, as an election app may have one: a row in
 * `app_checks` makes its transaction fail (`fail`) or take `sleep_ms` at COMMIT, after the hub's
 * commit key (it is queued after the watched write that queued the key's trigger).
 */
export const APP_CHECKS_SQL = `
    CREATE TABLE app_checks (id serial PRIMARY KEY, fail boolean NOT NULL DEFAULT false, sleep_ms int NOT NULL DEFAULT 0);
    CREATE FUNCTION app_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.sleep_ms > 0 THEN PERFORM pg_sleep(NEW.sleep_ms / 1000.0); END IF;
      IF NEW.fail THEN RAISE EXCEPTION 'app check failed'; END IF;
      RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER app_check AFTER INSERT ON app_checks DEFERRABLE INITIALLY DEFERRED
      FOR EACH ROW EXECUTE FUNCTION app_check();`;

/**
 * A fresh database for one test file, with the hub and the reference schema applied (`schema:
 * 'hub'`: the hub schema only, as `election-hub migrate` leaves a production database; `'none'`:
 * empty). `drop` removes it.
 */
export async function createTestDatabase(
  prefix = 'hub_test',
  opts: { schema?: 'reference' | 'hub' | 'none' } = {},
): Promise<TestDatabase> {
  const schema = opts.schema ?? 'reference';
  const admin = inject('databaseUrl');
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  await client.query(`CREATE DATABASE ${name}`);
  await client.end();
  const url = new URL(admin);
  url.pathname = `/${name}`;
  if (schema !== 'none') await migrate(url.toString(), { referenceSchema: schema === 'reference' });
  const pool = new pg.Pool({ connectionString: url.toString(), max: 8 });
  pool.on('error', () => undefined); // tests terminate backends on purpose
  return {
    url: url.toString(),
    pool,
    async drop() {
      await pool.end();
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** Seeds `elections` elections with `committees` committees each; returns their ids. */
export async function seed(
  pool: pg.Pool,
  elections = 2,
  committees = 2,
): Promise<{ elections: number[]; committees: Map<number, number[]> }> {
  const ids: number[] = [];
  const byElection = new Map<number, number[]>();
  for (let e = 0; e < elections; e++) {
    const r = await pool.query<{ id: number }>(`INSERT INTO elections (name) VALUES ($1) RETURNING id`, [
      `Election ${e + 1}`,
    ]);
    const id = Number(r.rows[0]?.id);
    ids.push(id);
    const cs: number[] = [];
    for (let c = 0; c < committees; c++) {
      const rc = await pool.query<{ id: number }>(
        `INSERT INTO committees (election_id, name) VALUES ($1, $2) RETURNING id`,
        [id, `Committee ${e + 1}.${c + 1}`],
      );
      cs.push(Number(rc.rows[0]?.id));
    }
    byElection.set(id, cs);
  }
  return { elections: ids, committees: byElection };
}
