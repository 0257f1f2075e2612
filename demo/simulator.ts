import type { Pool, PoolClient } from 'pg';
import { errorMessage } from '../src/errors.ts';

export interface SimulatorOptions {
  pool: Pool;
  electionIds: number[];
  /** Average statements per second over time; writes come in bursts around it. Default 5. */
  ratePerSecond?: number;
  log?: (msg: string) => void;
}

export interface SimulatorStats {
  /** Statements that took effect (a bulk statement counts once). */
  writes: number;
  /** Bulk INSERT ... SELECT generate_series statements among them. */
  bulk: number;
}

export interface Simulator {
  /** Ends the loop after the write in flight (and its transaction) has finished. */
  stop(): Promise<void>;
  stats(): SimulatorStats;
}

interface Committee {
  id: number;
  electionId: number;
}

/** Something that runs one statement: the pool, or the client holding an open transaction. */
type Queryable = Pick<PoolClient, 'query'>;

/** What one simulated action did. */
type Outcome = 'write' | 'bulk' | 'skip';

/** Names and candidates of the simulated election (also the bench's frames: bench/lib/frames.ts). */
export const FIRST_NAMES = [
  'Ahmad',
  'Fatima',
  'Yousef',
  'Mariam',
  'Khaled',
  'Noura',
  'Abdullah',
  'Sara',
  'Hamad',
  'Dana',
  'Faisal',
  'Layla',
];
export const FAMILY_NAMES = [
  'Al-Sabah',
  'Al-Mutairi',
  'Al-Ajmi',
  'Al-Enezi',
  'Al-Rashidi',
  'Al-Kandari',
  'Al-Shammari',
  'Al-Azmi',
];
export const CANDIDATES = ['Candidate A', 'Candidate B', 'Candidate C', 'Candidate D', 'Candidate E', 'Candidate F'];
// Pledged guarantees kept in memory so updates and deletes hit real rows without scanning the table.
const PLEDGED_MEMORY = 1000;
const RETRY_AFTER_ERROR_MS = 1000;

/**
 * Writes election activity to the reference tables until stopped: guarantees pledged, confirmed,
 * withdrawn and (rarely) deleted, voters attending, votes counted, now and then a bulk insert and
 * now and then a burst in one transaction. Errors are logged and the loop carries on.
 */
export function startSimulator(opts: SimulatorOptions): Simulator {
  const log = opts.log ?? (() => undefined);
  const rate = opts.ratePerSecond ?? 5;
  if (!(rate > 0)) throw new Error(`ratePerSecond must be positive, got ${rate}`);
  const counters: SimulatorStats = { writes: 0, bulk: 0 };
  const state = createWorldState();
  const pause = createPause();
  let running = true;

  function count(outcomes: Outcome[]): void {
    for (const o of outcomes) {
      if (o !== 'skip') counters.writes++;
      if (o === 'bulk') counters.bulk++;
    }
  }

  async function loop(): Promise<void> {
    while (running) {
      try {
        if (!state.loaded) await state.load(opts.pool, opts.electionIds);
        if (state.committees.length === 0) {
          log(`simulator: no committees for elections ${opts.electionIds.join(',') || '(none)'}; waiting`);
          await pause(5000);
          continue;
        }
        const size = burstSize();
        // A clerk entering a batch at once: some bursts commit together, as one transaction.
        if (size > 1 && Math.random() < 0.15) await writeInTransaction(size);
        else for (let i = 0; i < size && running; i++) count([await writeOne(opts.pool)]);
        // Sleep long enough that bursts average out to `rate`, with jitter so they do not tick.
        await pause((size / rate) * 1000 * (0.5 + Math.random()));
      } catch (err) {
        log(`simulator: ${errorMessage(err)}`);
        await pause(RETRY_AFTER_ERROR_MS);
      }
    }
  }

  function writeOne(db: Queryable): Promise<Outcome> {
    const committee = pick(state.committees);
    const roll = Math.random();
    if (roll < 0.01) return bulkInsert(db, committee);
    if (roll < 0.36) return pledge(db, committee);
    if (roll < 0.5) return changeGuarantee(db, 'confirmed');
    if (roll < 0.53) return changeGuarantee(db, 'withdrawn');
    if (roll < 0.54) return deleteGuarantee(db);
    if (roll < 0.8) return attend(db, committee);
    return countVotes(db, committee);
  }

  async function writeInTransaction(size: number): Promise<void> {
    const client = await opts.pool.connect();
    let broken: Error | undefined;
    state.begin();
    try {
      await client.query('BEGIN');
      const outcomes: Outcome[] = [];
      for (let i = 0; i < size; i++) outcomes.push(await writeOne(client));
      await client.query('COMMIT');
      state.commit();
      count(outcomes);
    } catch (err) {
      state.rollback();
      await client.query('ROLLBACK').catch((rollbackErr: unknown) => {
        // The connection is unusable: have the pool destroy it instead of reusing it.
        broken = new Error('ROLLBACK failed', { cause: rollbackErr });
      });
      throw new Error(`transaction rolled back: ${errorMessage(err)}`, { cause: err });
    } finally {
      client.release(broken);
    }
  }

  async function pledge(db: Queryable, c: Committee): Promise<Outcome> {
    const res = await db.query<{ id: string }>(
      'INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3) RETURNING id',
      [c.electionId, c.id, voterName()],
    );
    const id = res.rows[0]?.id;
    if (id !== undefined) state.rememberPledged(id);
    return 'write';
  }

  async function changeGuarantee(db: Queryable, status: 'confirmed' | 'withdrawn'): Promise<Outcome> {
    const id = state.takePledged();
    if (id === undefined) return 'skip'; // nothing pledged yet
    await db.query('UPDATE guarantees SET status = $2, updated_at = now() WHERE id = $1', [id, status]);
    return 'write';
  }

  async function deleteGuarantee(db: Queryable): Promise<Outcome> {
    const id = state.takePledged();
    if (id === undefined) return 'skip';
    await db.query('DELETE FROM guarantees WHERE id = $1', [id]);
    return 'write';
  }

  async function attend(db: Queryable, c: Committee): Promise<Outcome> {
    await db.query('INSERT INTO attendance (election_id, committee_id, voter_name) VALUES ($1, $2, $3)', [
      c.electionId,
      c.id,
      voterName(),
    ]);
    return 'write';
  }

  // One votes row per committee and candidate: the first count inserts it, later ones add to it.
  async function countVotes(db: Queryable, c: Committee): Promise<Outcome> {
    const candidate = pick(CANDIDATES);
    const delta = 1 + Math.floor(Math.random() * 5);
    const id = state.voteRow(c.id, candidate);
    if (id !== undefined) {
      await db.query('UPDATE votes SET count = count + $2 WHERE id = $1', [id, delta]);
    } else {
      const res = await db.query<{ id: string }>(
        'INSERT INTO votes (election_id, committee_id, candidate, count) VALUES ($1, $2, $3, $4) RETURNING id',
        [c.electionId, c.id, candidate, delta],
      );
      const newId = res.rows[0]?.id;
      if (newId !== undefined) state.rememberVoteRow(c.id, candidate, newId);
    }
    return 'write';
  }

  // A whole polling station's register arriving at once: many rows from one statement.
  async function bulkInsert(db: Queryable, c: Committee): Promise<Outcome> {
    const rows = 50 + Math.floor(Math.random() * 251);
    const table = Math.random() < 0.5 ? 'attendance' : 'guarantees';
    await db.query(
      `INSERT INTO ${table} (election_id, committee_id, voter_name)
       SELECT $1, $2, 'Voter ' || $3::text || '-' || g FROM generate_series(1, $4::int) AS g`,
      [c.electionId, c.id, Date.now().toString(36), rows],
    );
    log(`simulator: bulk insert of ${rows} ${table} rows in committee ${c.id}`);
    return 'bulk';
  }

  const done = loop();
  let stopping: Promise<void> | undefined;
  return {
    stop() {
      stopping ??= (async () => {
        running = false;
        pause.cancel();
        await done;
      })();
      return stopping;
    },
    stats: () => ({ ...counters }),
  };
}

/** What the simulator knows about the database: committees, pledged guarantees, votes rows. */
function createWorldState() {
  let committees: Committee[] = [];
  let loaded = false;
  const pledged: string[] = [];
  const voteRows = new Map<string, string>();
  // Ids learnt inside the open transaction: they point at nothing if it rolls back.
  let pending: { pledged: string[]; votes: string[] } | undefined;

  return {
    get committees() {
      return committees;
    },
    get loaded() {
      return loaded;
    },
    async load(pool: Pool, electionIds: number[]): Promise<void> {
      const c = await pool.query<{ id: string; election_id: string }>(
        'SELECT id, election_id FROM committees WHERE election_id = ANY($1::bigint[]) ORDER BY id',
        [electionIds],
      );
      committees = c.rows.map((r) => ({ id: Number(r.id), electionId: Number(r.election_id) }));
      const v = await pool.query<{ id: string; committee_id: string; candidate: string }>(
        'SELECT id, committee_id, candidate FROM votes WHERE election_id = ANY($1::bigint[])',
        [electionIds],
      );
      for (const r of v.rows) voteRows.set(`${r.committee_id}|${r.candidate}`, r.id);
      loaded = committees.length > 0;
    },
    rememberPledged(id: string) {
      pledged.push(id);
      pending?.pledged.push(id);
      if (pledged.length > PLEDGED_MEMORY) pledged.shift();
    },
    takePledged(): string | undefined {
      if (pledged.length === 0) return undefined;
      const index = Math.floor(Math.random() * pledged.length);
      return pledged.splice(index, 1)[0];
    },
    voteRow: (committeeId: number, candidate: string) => voteRows.get(`${committeeId}|${candidate}`),
    rememberVoteRow(committeeId: number, candidate: string, id: string) {
      const key = `${committeeId}|${candidate}`;
      voteRows.set(key, id);
      pending?.votes.push(key);
    },
    begin() {
      pending = { pledged: [], votes: [] };
    },
    commit() {
      pending = undefined;
    },
    rollback() {
      if (!pending) return;
      const gone = new Set(pending.pledged);
      for (let i = pledged.length - 1; i >= 0; i--) if (gone.has(pledged[i] ?? '')) pledged.splice(i, 1);
      for (const key of pending.votes) voteRows.delete(key);
      pending = undefined;
    },
  };
}

/** A sleep that stop() cuts short; once cancelled, every later sleep returns at once. */
function createPause(): ((ms: number) => Promise<void>) & { cancel(): void } {
  let cancelled = false;
  let wakeCurrent: (() => void) | undefined;
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      if (cancelled) return resolve();
      const timer = setTimeout(finish, ms);
      function finish() {
        clearTimeout(timer);
        wakeCurrent = undefined;
        resolve();
      }
      wakeCurrent = finish;
    });
  return Object.assign(pause, {
    cancel() {
      cancelled = true;
      wakeCurrent?.();
    },
  });
}

/** Mostly single writes, sometimes a handful at once. */
function burstSize(): number {
  const r = Math.random();
  if (r < 0.5) return 1;
  if (r < 0.85) return 2 + Math.floor(Math.random() * 3);
  return 5 + Math.floor(Math.random() * 6);
}

function voterName(): string {
  return `${pick(FIRST_NAMES)} ${pick(FAMILY_NAMES)}`;
}

function pick<T>(items: readonly T[]): T {
  const item = items[Math.floor(Math.random() * items.length)];
  if (item === undefined) throw new Error('pick from an empty list');
  return item;
}

const DEMO_ELECTIONS = [
  { name: 'National Assembly 2026: First District', committees: 6 },
  { name: 'National Assembly 2026: Second District', committees: 5 },
  { name: 'Municipal Council 2026', committees: 4 },
];

/**
 * Creates the demo elections and their committees when `elections` is empty; returns the ids of
 * the elections there are (the existing ones otherwise), in id order.
 */
export async function seedDemo(pool: Pool): Promise<number[]> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    // Two demo processes starting together must not both seed: the check and inserts are serialised.
    await client.query('LOCK TABLE elections IN SHARE ROW EXCLUSIVE MODE');
    const existing = await client.query<{ id: string }>('SELECT id FROM elections ORDER BY id');
    if (existing.rows.length > 0) {
      await client.query('COMMIT');
      return existing.rows.map((r) => Number(r.id));
    }
    const ids: number[] = [];
    for (const election of DEMO_ELECTIONS) {
      const res = await client.query<{ id: string }>('INSERT INTO elections (name) VALUES ($1) RETURNING id', [
        election.name,
      ]);
      const id = res.rows[0]?.id;
      if (id === undefined) throw new Error('INSERT INTO elections returned no id');
      await client.query(
        `INSERT INTO committees (election_id, name)
         SELECT $1, 'Committee ' || n FROM generate_series(1, $2::int) AS n`,
        [id, election.committees],
      );
      ids.push(Number(id));
    }
    await client.query('COMMIT');
    return ids;
  } catch (err) {
    await client.query('ROLLBACK').catch((rollbackErr: unknown) => {
      broken = new Error('ROLLBACK failed', { cause: rollbackErr });
    });
    throw new Error('seeding the demo elections failed', { cause: err });
  } finally {
    client.release(broken);
  }
}
