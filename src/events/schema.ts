import { z } from 'zod';

/*
 * The protocol in one place: zod schemas shared by the hub (validation of everything that
 * comes in), the client SDK (typed events) and the AsyncAPI generator (docs/asyncapi.json).
 */

export const Topic = z
  .string()
  .max(220)
  .regex(
    /^(election:(\*|0|[1-9][0-9]{0,18})|(committee|dashboard):(0|[1-9][0-9]{0,18})|user:[^\s]{1,200})$/,
    'not a topic: election:*, election:{id}, committee:{id}, dashboard:{id} or user:{sub}, ids without leading zeros',
  )
  .describe(
    "election:*, election:{id}, committee:{id}, dashboard:{id} (only that election's dashboard_update frames; allowed wherever election:{id} is) or user:{sub}; ids are bigints written without leading zeros (one spelling per topic)",
  );

/** A bigint id in a frame: exact either way. */
export const IdValue = z
  .union([z.number().int(), z.string().regex(/^-?(0|[1-9][0-9]{0,18})$/)])
  .describe(
    'A bigint id: a JSON number when it is a safe integer (below 2^53 in magnitude), otherwise its exact decimal string',
  );

export const Cursor = z.string().max(40).describe('Opaque position in the global event order');

// ---- client -> server -------------------------------------------------------------------

export const PingFrame = z.object({ type: z.literal('ping') });
/** Checked against the topic grammar by the hub, which answers `bad_topic` for anything else. */
const RequestedTopic = z
  .string()
  .max(220)
  .describe(
    'election:*, election:{id}, committee:{id}, dashboard:{id} or user:{sub}; ids without leading zeros, at most 2^63-1 (any other spelling: bad_topic)',
  );

export const SubscribeFrame = z.object({
  type: z.literal('subscribe'),
  topics: z
    .array(RequestedTopic)
    .min(1)
    .max(1000)
    .describe(
      'committee:{id} delivers rows of that committee whose own election the token may see (or all of them with a committees claim for it), whatever election the committee had when subscribed',
    ),
  since: Cursor.optional(),
});
export const UnsubscribeFrame = z.object({
  type: z.literal('unsubscribe'),
  topics: z.array(RequestedTopic).min(1).max(1000),
});
export const ClientFrame = z.discriminatedUnion('type', [PingFrame, SubscribeFrame, UnsubscribeFrame]);
export type ClientFrame = z.infer<typeof ClientFrame>;

// ---- server -> client -------------------------------------------------------------------

export const RowEventType = z.enum(['guarantee_update', 'attendance_update', 'voting_update']);
export const Action = z
  .enum(['created', 'updated', 'deleted', 'truncated'])
  .describe(
    'truncated: the whole table was emptied (TRUNCATE); sent to election:* only, with no election, committee or id',
  );

export const RowEvent = z.object({
  type: RowEventType,
  action: Action,
  election_id: IdValue.nullable(),
  committee_id: IdValue.nullable(),
  id: z
    .unknown()
    .describe(
      "The row primary key, exactly as the row's JSON has it (a bigint key beyond 2^53 is a JSON number with all its digits)",
    ),
  data: z
    .record(z.string(), z.unknown())
    .describe(
      'The row after the change (before it, for deletes), or only the columns hub.watch was given plus the keys; for truncated: {"table": "<schema.table>"}',
    ),
  cursor: Cursor,
  committed_at: z.string().describe('ISO 8601 time its transaction committed (took its place in the order)'),
});
export type RowEvent = z.infer<typeof RowEvent>;

export const AppEvent = z.object({
  type: z.string().describe('The type given to hub.publish(topic, type, payload)'),
  topic: Topic,
  data: z.unknown(),
  cursor: Cursor,
  committed_at: z.string(),
});
export type AppEvent = z.infer<typeof AppEvent>;

export const Counts = z.object({ guarantees: z.number(), attendance: z.number(), votes: z.number() });
export const CommitteeCounts = Counts.extend({ committee_id: IdValue });

export const DashboardSnapshot = z.object({
  election_id: IdValue,
  cursor: Cursor,
  totals: Counts,
  committees: z.array(CommitteeCounts),
});
export type DashboardSnapshot = z.infer<typeof DashboardSnapshot>;

export const DashboardUpdate = DashboardSnapshot.extend({
  type: z.literal('dashboard_update'),
  cursor: Cursor.describe(
    'Position of these numbers in the global order; the next update of this election on this connection has it as `base`',
  ),
  base: Cursor.nullable().describe(
    "null: the full state (every committee; replace what you have). Else the cursor of this election's previous dashboard_update on this connection: apply only if it equals the cursor of the last update you applied (overwrite the listed committees); anything else is a broken chain: fetch GET /dashboard/{id} again",
  ),
  totals: Counts,
  committees: z
    .array(CommitteeCounts)
    .describe(
      'With base null, every committee; else only the committees whose numbers changed since base, with their absolute numbers',
    ),
});
export type DashboardUpdate = z.infer<typeof DashboardUpdate>;

export const ConnectionSuccess = z.object({
  type: z.literal('connection_success'),
  sub: z.string(),
  topics: z.array(Topic),
  cursor: Cursor,
});
export const Subscribed = z.object({ type: z.literal('subscribed'), topics: z.array(Topic), cursor: Cursor });
export const Unsubscribed = z.object({ type: z.literal('unsubscribed'), topics: z.array(z.string()) });
export const Resync = z.object({ type: z.literal('resync'), topics: z.array(Topic) });
export const Pong = z.object({ type: z.literal('pong') });
export const ErrorFrame = z.object({ type: z.literal('error'), code: z.string(), message: z.string() });

export const ControlFrame = z.discriminatedUnion('type', [
  ConnectionSuccess,
  Subscribed,
  Unsubscribed,
  Resync,
  Pong,
  ErrorFrame,
  DashboardUpdate,
]);
export type ControlFrame = z.infer<typeof ControlFrame>;

/** Everything the server sends; application events are the open-ended remainder. */
export const ServerFrame = z.union([ControlFrame, RowEvent, AppEvent]);
export type ServerFrame = z.infer<typeof ServerFrame>;

// ---- database -> hub --------------------------------------------------------------------

const SqlBigint = z.string().regex(/^-?\d{1,19}$/);

/** An outbox row as the hub selects it (ids and rows as text: never parsed, so exact). Validated, never trusted. */
export const OutboxRow = z.object({
  seq: z.string().regex(/^\d{1,20}$/),
  id: z.string().regex(/^\d{1,20}$/),
  kind: z.string().min(1).max(64),
  action: z.string().min(1).max(64),
  topic: z.string().max(220).nullable(),
  election_id: SqlBigint.nullable(),
  committee_id: SqlBigint.nullable(),
  row_id: z.string().nullable(),
  data: z.string().nullable(),
  committed_ms: z.number().finite(),
  // Selected by the reader only (hub.next_page and hub.read_page, sql/011 and sql/014): what the dashboard totals need.
  vote_count: z.string().max(64).nullable().optional(),
  old_election_id: SqlBigint.nullable().optional(),
  old_committee_id: SqlBigint.nullable().optional(),
  old_count: z.string().max(64).nullable().optional(),
});
export type OutboxRow = z.infer<typeof OutboxRow>;

/** NOTIFY payloads are wake-ups only; anything else on the channel is counted and ignored. */
export const NotifyPayload = z.string().max(64);

/** The frame type a watched kind's events carry (`vote` rows are `voting_update`). */
export function eventTypeOf(kind: string): string {
  return kind === 'vote' ? 'voting_update' : `${kind}_update`;
}
