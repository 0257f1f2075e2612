import type { OutboxEvent } from './event.ts';
import type { Position } from './position.ts';
import type { Id } from './topics.ts';

/** Which rows a replay page may hold: any election, committee or user topic named, or all of them. */
export type TopicFilter = { all: boolean; elections: Id[]; committees: Id[]; topics: string[] };

/**
 * One row of a replay page: its position (undefined only for a row without a readable one) and
 * its event (undefined when the row is malformed). A replay advances row by row, decodable or not.
 */
export type HistoryRow = { readonly pos: Position | undefined; readonly event: OutboxEvent | undefined };

/**
 * Replay storage: the outbox as delivery pages through it to resume a socket (src/db/outbox.ts
 * implements it over PostgreSQL; delivery never sees the database).
 */
export type History = {
  /**
   * Rows in (after, upTo], in the global order, at most `limit`, that may be on the filter's
   * topics: a superset (a committee's rows from any election); the caller applies the delivery rule.
   */
  page(after: Position, upTo: Position, filter: TopicFilter, limit: number): Promise<HistoryRow[]>;
  /** Where pruning has reached (any node's): a `since` below it can no longer be replayed completely. */
  prunedMark(): Promise<Position>;
  /**
   * For a cursor of the order before commit keys (below FIRST_SEQ): whether it can still be
   * placed exactly (sql/006_commit_order.sql); false means answer resync.
   */
  legacyCursorKnown(p: Position): Promise<boolean>;
};
