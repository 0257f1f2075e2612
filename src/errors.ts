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

/**
 * WebSocket close codes (contract section 5). After 1001, 4008 and 4009 a client reconnects
 * and resumes with its last cursor: nothing is lost.
 */
export const CloseCode = {
  goingAway: 1001,
  policy: 1008,
  tooBig: 1009,
  tokenExpired: 4001,
  tooSlow: 4008,
  /** A replay (`subscribe` with `since`) could not be completed, e.g. the database failed mid-resume. */
  resumeFailed: 4009,
} as const;

/** What each close code tells the client (README, docs/asyncapi.json). */
export const CLOSE_CODE_MEANINGS: Record<(typeof CloseCode)[keyof typeof CloseCode], string> = {
  1001: 'hub shutting down: reconnect and resume with the last cursor',
  1008: 'repeated bad frames',
  1009: 'frame over MAX_PAYLOAD_BYTES',
  4001: 'token expired: get a new token, reconnect',
  4008: 'too slow (buffer over MAX_BACKPRESSURE_BYTES): reconnect and resume',
  4009: 'resume failed (the replay could not be completed): reconnect and resume',
};

/** Wraps an unknown throwable so the original is kept as `cause`. */
export function wrapError(message: string, cause: unknown): Error {
  return new Error(message, { cause });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
