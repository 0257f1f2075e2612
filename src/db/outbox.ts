/*
 * db/: everything that speaks SQL to the hub's schema: migrations, pools, the listener, the
 * outbox reader and its queries (this file, with the replay storage `History` delivery pages
 * through), snapshots, the committee directory. Positions and cursors are in events/position.ts.
 *
 * Lifecycle: `startHub` creates the pools, then the reader (it starts at the current horizon),
 * then the listener; it stops them in reverse. Invariants (docs/ARCHITECTURE.md sections 1, 2
 * and 5): the outbox is the truth and NOTIFY only wakes the reader; rows are read in (seq, id)
 * order, the commit keys hub.sequence gives after the commit, so nothing is skipped and every
 * node sees the same order; a
 * snapshot's cursor makes snapshot + events after it = the database. Rows are outside input:
 * validated (events/schema.ts), a malformed one is counted and passed by its position.
 */
import type pg from 'pg';
import { OutboxRow, eventTypeOf } from '../events/schema.ts';
import { type Id, jsonId, routeTopics } from '../events/topics.ts';
import { type LostRange, type Position, encodeCursor } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import type { History, TopicFilter } from '../events/history.ts';

// Selected as text; queries order by the columns (`ob.seq, ob.id`), never these aliases. `seq` is
// the commit key (sql/009_sequencer.sql), `committed_ms` the time of the transaction's last
// captured row (its commit for a statement-sized transaction; a key taken at commit under 006).
// Ids and rows (json, sql/008) stay text end to end: a bigint beyond 2^53 is never squeezed through a double.
const COLUMNS = `ob.seq::text AS seq, ob.id::text AS id, ob.kind, ob.action, ob.topic, ob.election_id::text AS election_id,
  ob.committee_id::text AS committee_id, ob.row_id::text AS row_id, ob.data::text AS data,
  (extract(epoch FROM ob.committed_at) * 1000)::float8 AS committed_ms`;

type RawRow = Record<string, unknown>;

const DIGITS = /^\d{1,20}$/;

/** A query's error handler: an undefined function (42883) means a migration this hub needs is not applied. */
const missing =
  (fn: string, file: string) =>
  (err: unknown): never => {
    if ((err as { code?: unknown }).code === '42883')
      throw new Error(`${fn} is missing: this hub needs sql/${file} (run \`election-hub migrate\`)`, { cause: err });
    throw err;
  };

/** The position of any selected row, decodable or not (replays and the reader advance row by row). */
export function rowPosition(raw: RawRow): Position | undefined {
  const { seq, id } = raw;
  if (typeof seq !== 'string' || typeof id !== 'string' || !DIGITS.test(seq) || !DIGITS.test(id)) return undefined;
  return { seq: BigInt(seq), id: BigInt(id) };
}

/** The commit key of a row `readAfter` returned (every row has one, including a key's empty row). */
export function rowSeq(raw: RawRow): bigint | undefined {
  return typeof raw.seq === 'string' && DIGITS.test(raw.seq) ? BigInt(raw.seq) : undefined;
}

/** Turns a selected row into an event; undefined (and counted by the caller) if malformed. */
export function decodeRow(raw: RawRow): OutboxEvent | undefined {
  const parsed = OutboxRow.safeParse(raw);
  if (!parsed.success) return undefined;
  const r = parsed.data;
  const committedMs = r.committed_ms;
  const pos = { seq: BigInt(r.seq), id: BigInt(r.id) };
  const cursor = encodeCursor(pos);
  const committedAt = new Date(committedMs).toISOString();
  const data = r.data ?? 'null';
  const app = r.kind === 'app';
  const type = app ? r.action : eventTypeOf(r.kind);
  // bigint::text is canonical (no leading zeros): these are the ids topics name.
  const electionId: Id | null = r.election_id;
  const committeeId: Id | null = r.committee_id;
  const num = (v: string | null | undefined) => (v === null || v === undefined ? null : Number(v) || 0);
  const old =
    r.action === 'updated' &&
    (r.old_election_id !== undefined || r.old_committee_id !== undefined || r.old_count !== undefined)
      ? { electionId: r.old_election_id ?? null, committeeId: r.old_committee_id ?? null, count: num(r.old_count) }
      : null;
  // Built by concatenation so a row's JSON text (its key and data) is never parsed and
  // re-serialized: large rows cost no JSON work, and bigints keep every digit.
  const frame = app
    ? `{"type":${JSON.stringify(type)},"topic":${JSON.stringify(r.topic)},"data":${data},"cursor":"${cursor}","committed_at":"${committedAt}"}`
    : `{"type":"${type}","action":${JSON.stringify(r.action)},"election_id":${jsonId(electionId)},"committee_id":${jsonId(committeeId)},` +
      `"id":${r.row_id ?? 'null'},"data":${data},"cursor":"${cursor}","committed_at":"${committedAt}"}`;
  return {
    pos,
    cursor,
    kind: r.kind,
    action: app ? 'published' : r.action,
    type,
    electionId,
    committeeId,
    topic: r.topic,
    topics: routeTopics({ electionId, committeeId, topic: r.topic }),
    frame,
    committedAtMs: committedMs,
    count: num(r.vote_count),
    old,
  };
}

export type ReadResult = {
  /**
   * In (seq, id) order. A key whose transaction left no row after `after` (it wrote none, or
   * they were read already) comes as one row with `id` null: it tells the reader the key exists.
   */
  rows: RawRow[];
  /** More rows follow: the page stopped at its row limit or byte budget. */
  more: boolean;
  /** What hub.sequence returned before the read: every key below it has committed. */
  frontier: bigint;
};

/**
 * The most rows one page can hold (hub.next_page refuses more: its commits scan has this as a
 * constant LIMIT, see sql/011_sequence_and_read.sql).
 */
export const MAX_PAGE_ROWS = 10_000;

/**
 * Gives keys to what has committed since the last call (of any node: hub.sequence), then reads
 * the next rows after `after` in (seq, id) order: every committed key from `after.seq` on, with
 * its rows. One call, one round trip (hub.next_page, sql/011_sequence_and_read.sql); the rows
 * come back once the keys are durable. A page holds at most `limit` rows and stops before the
 * row that would take it past `maxBytes` of data (a first row larger than that still comes,
 * alone): the hub holds each page twice (the row text and its frame), so its memory is bounded
 * by bytes, not rows. `frontier`: every key below it has committed (see sequenceCommits).
 */
export async function readAfter(
  db: Pick<pg.Pool, 'query'>,
  after: Position,
  limit: number,
  maxBytes = Number.MAX_SAFE_INTEGER,
): Promise<ReadResult> {
  const all = await pageQuery(db, 'next_page', '011_sequence_and_read.sql', after, limit, maxBytes);
  const page = pageOf(all, limit);
  const f = all[0]?.frontier;
  if (typeof f !== 'string' || !DIGITS.test(f)) throw new Error('hub.next_page returned no frontier');
  return { ...page, frontier: BigInt(f) };
}

/**
 * The page after `after` as readAfter reads it, without giving keys and without the sequencer's
 * lock (hub.read_page, sql/014_pages_without_the_lock.sql): for the pages of a pass after its
 * first, whose keys that first call gave. Keys given since by any node may come too.
 */
export async function readPage(
  db: Pick<pg.Pool, 'query'>,
  after: Position,
  limit: number,
  maxBytes = Number.MAX_SAFE_INTEGER,
): Promise<Omit<ReadResult, 'frontier'>> {
  return pageOf(await pageQuery(db, 'read_page', '014_pages_without_the_lock.sql', after, limit, maxBytes), limit);
}

/** hub.next_page or hub.read_page (the same arguments and columns), named: prepared once per pooled connection. */
async function pageQuery(
  db: Pick<pg.Pool, 'query'>,
  fn: 'next_page' | 'read_page',
  file: string,
  after: Position,
  limit: number,
  maxBytes: number,
): Promise<RawRow[]> {
  const res = await db
    .query({
      name: `hub_${fn}`,
      text: `SELECT * FROM hub.${fn}($1::bigint, $2::bigint, $3::int, $4::bigint)`,
      values: [after.seq.toString(), after.id.toString(), Math.min(limit, MAX_PAGE_ROWS), maxBytes],
    })
    .catch(missing(`hub.${fn}()`, file));
  return res.rows as RawRow[];
}

/** A page's rows (an empty page is one row with nothing but the frontier) and whether more follow. */
function pageOf(all: RawRow[], limit: number): Omit<ReadResult, 'frontier'> {
  const first = all[0];
  const rows = first === undefined || first.seq === null ? [] : all;
  const fetched = Number(first?.fetched ?? 0);
  return { rows, more: fetched >= limit || rows.length < fetched };
}

/**
 * Rows in (after, upTo] that may be on the given topics, for replaying to one socket: a
 * superset (a committee's rows from any election); the caller applies the delivery rule.
 * `upTo` must be settled (a reader's position): no key at or below it can still appear.
 */
export async function readRange(
  db: pg.Pool,
  after: Position,
  upTo: Position,
  f: TopicFilter,
  limit: number,
): Promise<RawRow[]> {
  // Unnamed on purpose: planned at every run with the tables' size of that moment. A statement
  // prepared once per pooled connection keeps the generic plan PostgreSQL settles on after five
  // runs, made on whatever the outbox held then: made on an empty one, it scanned the whole
  // outbox for every key (a 1 000-row replay took 29-41 s after 20 000 writes autovacuum had not
  // analyzed; planned at each run, 10-18 ms; test/plans.test.ts). A replay is one per resuming
  // client, not per event: the planning (a fraction of a millisecond) is cheap next to that risk.
  const res = await db.query({
    text: `SELECT ${COLUMNS} FROM (
       SELECT c.seq, c.committed_at, o.* FROM (SELECT seq, txid, committed_at FROM hub.commits WHERE seq >= $1::bigint AND seq <= $3::bigint) c
       JOIN LATERAL (
         SELECT ob.id, ob.kind, ob.action, ob.topic, ob.election_id, ob.committee_id, ob.row_id, ob.data FROM hub.outbox ob
         WHERE ob.txid = c.txid AND ob.id > CASE WHEN c.seq = $1::bigint THEN $2::bigint ELSE 0 END
           AND (c.seq < $3::bigint OR ob.id <= $4::bigint)
           AND ($5 OR ob.election_id = ANY($6::bigint[]) OR ob.committee_id = ANY($7::bigint[]) OR ob.topic = ANY($8::text[]))
         ORDER BY ob.id LIMIT $9) o ON true
       ORDER BY c.seq, o.id LIMIT $9) ob
     ORDER BY ob.seq, ob.id`,
    values: [
      after.seq.toString(),
      after.id.toString(),
      upTo.seq.toString(),
      upTo.id.toString(),
      f.all,
      f.elections,
      f.committees,
      f.topics,
      limit,
    ],
  });
  return res.rows as RawRow[];
}

/**
 * Every commit key below the result has committed, so a query that starts after this returns
 * sees it, and no key below it will be added (hub.commit_frontier, sql/009_sequencer.sql). One
 * row read: gives no keys (see sequenceCommits).
 */
export async function commitFrontier(db: Pick<pg.Pool, 'query'>): Promise<bigint> {
  const res = await db.query<{ f: string }>({
    name: 'hub_commit_frontier',
    text: 'SELECT hub.commit_frontier()::text AS f',
  });
  return BigInt(res.rows[0]?.f ?? '0');
}

/**
 * Gives commit keys to the transactions that have committed outbox rows since the last call (of
 * any node), and returns the frontier after it (hub.sequence, sql/009_sequencer.sql). With
 * `wait` false it gives none and returns undefined when another call is under way.
 */
export async function sequenceCommits(db: Pick<pg.Pool, 'query'>): Promise<bigint>;
export async function sequenceCommits(db: Pick<pg.Pool, 'query'>, wait: false): Promise<bigint | undefined>;
export async function sequenceCommits(db: Pick<pg.Pool, 'query'>, wait = true): Promise<bigint | undefined> {
  const res = await db
    .query<{ f: string | null }>({
      name: wait ? 'hub_sequence' : 'hub_sequence_try',
      text: `SELECT hub.sequence(${wait ? 'true' : 'false'})::text AS f`,
    })
    .catch(missing('hub.sequence()', '009_sequencer.sql'));
  const f = res.rows[0]?.f;
  if (f == null) {
    if (wait) throw new Error('hub.sequence returned no frontier');
    return undefined;
  }
  return BigInt(f);
}

/**
 * The key ranges restarts of PostgreSQL took back (hub.lost_keys, sql/012_async_keys_and_restarts.sql),
 * in order; none before 012 (every key was committed synchronously).
 */
export async function lostKeys(db: Pick<pg.Pool, 'query'>): Promise<LostRange[]> {
  const res = await db
    .query<{ f: string; t: string }>({
      name: 'hub_lost_keys',
      text: 'SELECT from_seq::text AS f, to_seq::text AS t FROM hub.lost_keys ORDER BY from_seq',
    })
    .catch((err: unknown) => {
      if ((err as { code?: unknown }).code === '42P01') return { rows: [] as Array<{ f: string; t: string }> };
      throw err;
    });
  return res.rows.map((r) => ({ from: BigInt(r.f), to: BigInt(r.t) }));
}

/** Where pruning has reached: a `since` below it can no longer be replayed completely. */
export async function prunedPosition(db: Pick<pg.Pool, 'query'>): Promise<Position> {
  const res = await db.query<{ t: string; i: string }>(
    `SELECT pruned_seq::text AS t, pruned_id::text AS i FROM hub.outbox_state`,
  );
  const row = res.rows[0];
  return { seq: BigInt(row?.t ?? '0'), id: BigInt(row?.i ?? '0') };
}

/**
 * Whether a position below FIRST_SEQ (a cursor of the (txid, id) order) is one this outbox can
 * resume: only up to the transaction ids assigned before the commit keys existed; above that
 * it came from a hub of the previous version after the migration, and cannot be placed.
 */
export async function legacyCursorKnown(db: Pick<pg.Pool, 'query'>, p: Position): Promise<boolean> {
  const res = await db.query<{ ok: boolean }>(`SELECT $1::numeric <= legacy_limit AS ok FROM hub.outbox_state`, [
    p.seq.toString(),
  ]);
  return res.rows[0]?.ok === true;
}

/**
 * Deletes up to `batch` rows older than the retention, in order, and records how far
 * pruning reached. Safe with several nodes: each deletes what all of them may drop. Only keys
 * below the commit frontier go, and only a prefix of them: the first key younger than the
 * retention stops the batch, so a key is never deleted while one before it is kept. Rows of
 * transactions that have no key yet are never touched.
 */
export async function prune(db: pg.Pool, retentionMs: number, batch = 10_000): Promise<number> {
  const frontier = await commitFrontier(db);
  const res = await db.query<{ n: string }>(
    `WITH cand AS (
       SELECT c.seq, c.txid, c.committed_at, o.id FROM (SELECT seq, txid, committed_at FROM hub.commits WHERE seq < $3::bigint ORDER BY seq LIMIT $2) c
       LEFT JOIN LATERAL (SELECT ob.id FROM hub.outbox ob WHERE ob.txid = c.txid ORDER BY ob.id LIMIT $2) o ON true
       ORDER BY c.seq, o.id LIMIT $2
     ), young AS (
       SELECT min(seq) AS seq FROM cand WHERE committed_at >= now() - make_interval(secs => $1::float8 / 1000)
     ), doomed AS (
       SELECT * FROM cand WHERE seq < coalesce((SELECT seq FROM young), $3::bigint)
     ), del AS (
       DELETE FROM hub.outbox o USING doomed d WHERE o.txid = d.txid AND o.id = d.id RETURNING d.seq, o.id
     ), gone AS (
       -- A key goes with its last row: every key of the batch but the last one is complete
       -- (the batch is in key order), and the last one too when the batch did not fill up.
       DELETE FROM hub.commits c USING (SELECT DISTINCT seq FROM doomed) d
       WHERE c.seq = d.seq AND (d.seq < (SELECT max(seq) FROM cand) OR (SELECT count(*) FROM cand) < $2 OR (SELECT seq FROM young) IS NOT NULL)
       RETURNING c.txid
     ), top AS (
       SELECT seq, id FROM del ORDER BY seq DESC, id DESC LIMIT 1
     ), upd AS (
       UPDATE hub.outbox_state s SET pruned_seq = top.seq, pruned_id = top.id FROM top
       WHERE (top.seq, top.id) > (s.pruned_seq, s.pruned_id) RETURNING 1
     )
     SELECT count(*)::text AS n, (SELECT count(*) FROM gone) AS keys FROM del`,
    [retentionMs, batch, frontier.toString()],
  );
  return Number(res.rows[0]?.n ?? 0);
}

/** Rows after `after` not yet read, and the age of the oldest (for the backlog metrics). */
export async function backlog(db: pg.Pool, after: Position): Promise<{ count: number; oldestAgeSeconds: number }> {
  const res = await db.query<{ n: string; age: number | null }>(
    `SELECT count(*)::text AS n, extract(epoch FROM clock_timestamp() - min(committed_at))::float8 AS age
     FROM (SELECT c.committed_at FROM hub.commits c JOIN hub.outbox o ON o.txid = c.txid
           WHERE c.seq >= $1::bigint AND (c.seq, o.id) > ($1::bigint, $2::bigint) ORDER BY c.seq, o.id LIMIT 100000) s`,
    [after.seq.toString(), after.id.toString()],
  );
  const row = res.rows[0];
  return { count: Number(row?.n ?? 0), oldestAgeSeconds: Math.max(0, row?.age ?? 0) };
}

/** Replay storage (events/history.ts) over the outbox: what delivery pages through to resume a socket. */
export function createHistory(db: pg.Pool): History {
  return {
    page: async (after, upTo, filter, limit) =>
      (await readRange(db, after, upTo, filter, limit)).map((raw) => ({
        pos: rowPosition(raw),
        event: decodeRow(raw),
      })),
    prunedMark: () => prunedPosition(db),
    legacyCursorKnown: (p) => legacyCursorKnown(db, p),
  };
}
