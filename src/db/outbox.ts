/*
 * db/: everything that speaks SQL to the hub's schema: migrations, pools, the listener, the
 * outbox reader and its queries (this file, with the replay storage `History` delivery pages
 * through), snapshots, the committee directory. Positions and cursors are in events/position.ts.
 *
 * Lifecycle: `startHub` creates the pools, then the reader (it starts at the current horizon),
 * then the listener; it stops them in reverse. Invariants (docs/ARCHITECTURE.md sections 1, 2
 * and 5): the outbox is the truth and NOTIFY only wakes the reader; rows are read in (txid, id)
 * order below the horizon, so nothing is skipped and every node sees the same order; a
 * snapshot's cursor makes snapshot + events after it = the database. Rows are outside input:
 * validated (events/schema.ts), a malformed one is counted and passed by its position.
 */
import type pg from 'pg';
import { OutboxRow, eventTypeOf } from '../events/schema.ts';
import { type Id, jsonId, routeTopics } from '../events/topics.ts';
import { type Position, encodeCursor } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import type { History, TopicFilter } from '../events/history.ts';

// Selected as text; queries order by the table's columns (`ob.txid, ob.id`), never these aliases.
// Ids and jsonb stay text end to end: a bigint beyond 2^53 is never squeezed through a double.
const COLUMNS = `ob.txid::text AS txid, ob.id::text AS id, ob.kind, ob.action, ob.topic, ob.election_id::text AS election_id,
  ob.committee_id::text AS committee_id, ob.row_id::text AS row_id, ob.data::text AS data,
  (extract(epoch FROM ob.committed_at) * 1000)::float8 AS committed_ms`;

/*
 * What the totals need of a row (OutboxEvent.count, .old), read in SQL, never by parsing the row:
 * a vote's `count` (the contract's name for it), and an update's previous election and
 * committee, through the watched table's column names (the first table of the kind, as the
 * snapshot does: kinds are expected to share column names). `old` is only read for updates.
 */
const TOTALS_COLUMNS = `CASE WHEN ob.kind = 'vote' THEN ob.data ->> 'count' END AS vote_count,
  hub.to_bigint(ob.old ->> w.ecol)::text AS old_election_id, hub.to_bigint(ob.old ->> w.ccol)::text AS old_committee_id,
  CASE WHEN ob.kind = 'vote' AND w.ecol IS NOT NULL THEN ob.old ->> 'count' END AS old_count`;
const TOTALS_WATCHED = `tw AS (SELECT DISTINCT ON (kind) kind, election_column::text AS ecol, committee_column::text AS ccol
       FROM hub.watched ORDER BY kind, tbl::text)`;
const TOTALS_JOIN = `LEFT JOIN tw w ON ob.action = 'updated' AND w.kind = ob.kind`;

type RawRow = Record<string, unknown>;

/** The position of any selected row, decodable or not (replays and the reader advance row by row). */
export function rowPosition(raw: RawRow): Position | undefined {
  const { txid, id } = raw;
  if (typeof txid !== 'string' || typeof id !== 'string' || !/^\d{1,20}$/.test(txid) || !/^\d{1,20}$/.test(id)) return undefined;
  return { txid: BigInt(txid), id: BigInt(id) };
}

/** Turns a selected row into an event; undefined (and counted by the caller) if malformed. */
export function decodeRow(raw: RawRow): OutboxEvent | undefined {
  const parsed = OutboxRow.safeParse(raw);
  if (!parsed.success) return undefined;
  const r = parsed.data;
  const committedMs = r.committed_ms;
  const pos = { txid: BigInt(r.txid), id: BigInt(r.id) };
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
    r.action === 'updated' && (r.old_election_id !== undefined || r.old_committee_id !== undefined || r.old_count !== undefined)
      ? { electionId: r.old_election_id ?? null, committeeId: r.old_committee_id ?? null, count: num(r.old_count) }
      : null;
  // Built by concatenation so a row's jsonb text (its key and data) is never parsed and
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
  rows: RawRow[];
  /** pg_snapshot_xmin of the query: every transaction below it has ended. */
  horizon: bigint;
  /** Committed rows exist at or above the horizon, held back by an older open transaction. */
  held: boolean;
  /** More rows follow below the horizon: the page stopped at its row limit or byte budget. */
  more: boolean;
};

/**
 * Bytes of a row's `data` as the hub will hold it: jsonb's own size when stored uncompressed
 * (about its text length, and free to read), else the length of its text (a compressed value
 * can be a hundredth of that, so its stored size says nothing).
 */
const DATA_BYTES = `CASE WHEN pg_column_compression(ob.data) IS NULL THEN coalesce(pg_column_size(ob.data), 0)
  ELSE octet_length(ob.data::text) END`;

/**
 * Reads the next rows after `after` in (txid, id) order, only below the horizon of
 * transactions still in flight, so a late-committing transaction is never skipped.
 * A page holds at most `limit` rows and stops before the row that would take it past
 * `maxBytes` of data (a first row larger than that still comes, alone): the hub holds each
 * page twice (the row text and its frame), so its memory is bounded by bytes, not rows.
 */
export async function readAfter(db: pg.Pool, after: Position, limit: number, maxBytes = Number.MAX_SAFE_INTEGER): Promise<ReadResult> {
  // Named: prepared once per pooled connection, so the hot path skips parsing and planning.
  // The innermost query takes the next `limit` rows by the primary key; the running sum of
  // their sizes cuts the page (data stays a TOAST pointer until a row is kept and selected).
  const res = await db.query({
    name: 'hub_read_after',
    text: `WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x), ${TOTALS_WATCHED}
     SELECT s.x::text AS horizon,
            -- max(txid) is one step down the primary key, whatever the statistics say
            -- (an EXISTS here could turn into a full scan of the outbox on stale stats).
            coalesce((SELECT max(h.txid) FROM hub.outbox h) >= s.x, false) AS held,
            o.*
     FROM s LEFT JOIN LATERAL (
       SELECT ${COLUMNS}, ob.fetched::int AS fetched, ${TOTALS_COLUMNS} FROM (
         SELECT l.*, sum(l.bytes) OVER (ORDER BY l.txid, l.id ROWS UNBOUNDED PRECEDING) - l.bytes AS before, count(*) OVER () AS fetched
         FROM (
           SELECT ob.*, ${DATA_BYTES} AS bytes FROM hub.outbox ob
           WHERE (ob.txid, ob.id) > ($1::text::xid8, $2::bigint) AND ob.txid < s.x
           ORDER BY ob.txid, ob.id LIMIT $3) l
       ) ob
       ${TOTALS_JOIN}
       WHERE ob.before < $4
       ORDER BY ob.txid, ob.id) o ON true`,
    values: [after.txid.toString(), after.id.toString(), limit, maxBytes],
  });
  const first = res.rows[0] as RawRow | undefined;
  const horizon = BigInt(String(first?.horizon ?? '0'));
  const rows = first?.txid == null ? [] : (res.rows as RawRow[]);
  const fetched = Number(first?.fetched ?? 0);
  return { rows, horizon, held: first?.held === true, more: fetched >= limit || rows.length < fetched };
}

/**
 * Rows in (after, upTo] that may be on the given topics, for replaying to one socket: a
 * superset (a committee's rows from any election); the caller applies the delivery rule.
 */
export async function readRange(db: pg.Pool, after: Position, upTo: Position, f: TopicFilter, limit: number): Promise<RawRow[]> {
  const res = await db.query({
    name: 'hub_read_range',
    text: `SELECT ${COLUMNS} FROM hub.outbox ob
     WHERE (ob.txid, ob.id) > ($1::text::xid8, $2::bigint) AND (ob.txid, ob.id) <= ($3::text::xid8, $4::bigint)
       AND ($5 OR ob.election_id = ANY($6::bigint[]) OR ob.committee_id = ANY($7::bigint[]) OR ob.topic = ANY($8::text[]))
     ORDER BY ob.txid, ob.id LIMIT $9`,
    values: [after.txid.toString(), after.id.toString(), upTo.txid.toString(), upTo.id.toString(), f.all, f.elections, f.committees, f.topics, limit],
  });
  return res.rows as RawRow[];
}

/** The current horizon: the position before every transaction still in flight. */
export async function currentHorizon(db: Pick<pg.Pool, 'query'>): Promise<{ horizon: Position; xmax: bigint }> {
  const res = await db.query<{ x: string; m: string }>(
    `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x, pg_snapshot_xmax(pg_current_snapshot())::text AS m`,
  );
  const row = res.rows[0];
  return { horizon: { txid: BigInt(row?.x ?? '0'), id: 0n }, xmax: BigInt(row?.m ?? '0') };
}

/** Where pruning has reached: a `since` below it can no longer be replayed completely. */
export async function prunedPosition(db: Pick<pg.Pool, 'query'>): Promise<Position> {
  const res = await db.query<{ t: string; i: string }>(`SELECT pruned_txid::text AS t, pruned_id::text AS i FROM hub.outbox_state`);
  const row = res.rows[0];
  return { txid: BigInt(row?.t ?? '0'), id: BigInt(row?.i ?? '0') };
}

/**
 * Deletes up to `batch` rows older than the retention, in order, and records how far
 * pruning reached. Safe with several nodes: each deletes what all of them may drop.
 */
export async function prune(db: pg.Pool, retentionMs: number, batch = 10_000): Promise<number> {
  const res = await db.query<{ n: string }>(
    `WITH doomed AS (
       SELECT txid, id FROM hub.outbox
       WHERE committed_at < now() - make_interval(secs => $1::float8 / 1000)
         AND txid < pg_snapshot_xmin(pg_current_snapshot())
       ORDER BY txid, id LIMIT $2
     ), del AS (
       DELETE FROM hub.outbox o USING doomed d WHERE o.txid = d.txid AND o.id = d.id RETURNING o.txid, o.id
     ), top AS (
       SELECT txid, id FROM del ORDER BY txid DESC, id DESC LIMIT 1
     ), upd AS (
       UPDATE hub.outbox_state s SET pruned_txid = top.txid, pruned_id = top.id FROM top
       WHERE (top.txid, top.id) > (s.pruned_txid, s.pruned_id) RETURNING 1
     )
     SELECT count(*)::text AS n FROM del`,
    [retentionMs, batch],
  );
  return Number(res.rows[0]?.n ?? 0);
}

/** Rows after `after` not yet read, and the age of the oldest (for the backlog metrics). */
export async function backlog(db: pg.Pool, after: Position): Promise<{ count: number; oldestAgeSeconds: number }> {
  const res = await db.query<{ n: string; age: number | null }>(
    `SELECT count(*)::text AS n, extract(epoch FROM clock_timestamp() - min(committed_at))::float8 AS age
     FROM (SELECT committed_at FROM hub.outbox WHERE (txid, id) > ($1::text::xid8, $2::bigint) ORDER BY txid, id LIMIT 100000) s`,
    [after.txid.toString(), after.id.toString()],
  );
  const row = res.rows[0];
  return { count: Number(row?.n ?? 0), oldestAgeSeconds: Math.max(0, row?.age ?? 0) };
}

/** Replay storage (events/history.ts) over the outbox: what delivery pages through to resume a socket. */
export function createHistory(db: pg.Pool): History {
  return {
    page: async (after, upTo, filter, limit) =>
      (await readRange(db, after, upTo, filter, limit)).map((raw) => ({ pos: rowPosition(raw), event: decodeRow(raw) })),
    prunedMark: () => prunedPosition(db),
  };
}
