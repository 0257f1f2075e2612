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
};
