import type { Position } from './position.ts';
import type { Id } from './topics.ts';

/** An outbox event, decoded once and serialized once. */
export type OutboxEvent = {
  readonly pos: Position;
  readonly cursor: string;
  readonly kind: string;
  readonly action: string;
  readonly type: string;
  readonly electionId: Id | null;
  readonly committeeId: Id | null;
  readonly topic: string | null;
  /** uWS topics it is published on (c:E:C, election:E, election:* or one user topic; see events/topics.ts). */
  readonly topics: readonly string[];
  /** The JSON frame sent to every socket. */
  readonly frame: string;
  readonly committedAtMs: number;
  /**
   * What the dashboard totals need (src/cache/totals.ts), selected in SQL so no row is parsed:
   * `count` is a vote's `count` (null for other kinds), `old` an update's previous election,
   * committee and count. Only the reader's pages (`readAfter` and `readPage`: hub.next_page, hub.read_page) select them; replayed rows
   * carry null (replays never feed the totals).
   */
  readonly count: number | null;
  readonly old: {
    readonly electionId: Id | null;
    readonly committeeId: Id | null;
    readonly count: number | null;
  } | null;
};
