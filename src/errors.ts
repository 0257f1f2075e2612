/** Error codes sent to clients in `{"type":"error","code":...}` frames and HTTP bodies: one list. */
export const ErrorCode = {
  badJson: 'bad_json',
  badFrame: 'bad_frame',
  unknownType: 'unknown_type',
  forbiddenTopic: 'forbidden_topic',
  badTopic: 'bad_topic',
  tooManyTopics: 'too_many_topics',
  badCursor: 'bad_cursor',
  rateLimited: 'rate_limited',
  unavailable: 'unavailable',
  internal: 'internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** WebSocket close codes (contract section 5). */
export const CloseCode = {
  goingAway: 1001,
  policy: 1008,
  tooBig: 1009,
  tokenExpired: 4001,
  tooSlow: 4008,
  resumeFailed: 4009,
} as const;

/** Wraps an unknown throwable so the original is kept as `cause`. */
export function wrapError(message: string, cause: unknown): Error {
  return new Error(message, { cause });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
