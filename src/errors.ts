/**
 * Every error code the hub sends, in one table (fastify's habit): in WebSocket error frames,
 * `{"type":"error","code":...,"message":...}`, and in HTTP error bodies,
 * `{"error":...,"reason"?:...}` (routes and the upgrade's refusals alike). Sites name codes
 * through `ErrorCode`; `ERRORS` says what each means, whether it is sent in frames and which
 * HTTP status goes with it. README.md ("Error codes") and docs/asyncapi.json (frame codes)
 * document each one: src/errors.test.ts checks that, and that src/ sends no other code.
 */
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
  unauthorized: 'unauthorized',
  forbidden: 'forbidden',
  notFound: 'not_found',
  tooManyConnections: 'too_many_connections',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

type ErrorSpec = {
  readonly meaning: string;
  /** Sent in WebSocket `error` frames. */
  readonly frame?: true;
  /** The HTTP status of a body with this code. */
  readonly status?: number;
};

/** The table: code → meaning, frames, HTTP status. */
export const ERRORS = {
  bad_json: { frame: true, meaning: 'the frame is not JSON' },
  bad_frame: { frame: true, meaning: 'a binary frame, or a known type with missing or wrong fields' },
  unknown_type: { frame: true, meaning: 'type is not ping, subscribe or unsubscribe' },
  forbidden_topic: { frame: true, meaning: 'the token may not use this topic (nothing of the request was subscribed)' },
  bad_topic: { frame: true, meaning: 'not a topic (topics have one spelling)' },
  too_many_topics: {
    frame: true,
    meaning: 'over MAX_TOPICS_PER_CONNECTION (also right after connection_success when the claims name more)',
  },
  bad_cursor: {
    frame: true,
    meaning:
      'since is not a cursor, or not one this hub issued (another database, a reset outbox): take a fresh snapshot',
  },
  rate_limited: { frame: true, meaning: 'over MAX_MESSAGES_PER_SECOND frames in a second: the frame was dropped' },
  unavailable: {
    frame: true,
    status: 503,
    meaning:
      'the hub cannot serve this now (not reading the outbox yet, shutting down, full, or a snapshot failed): retry, or another node',
  },
  internal: { frame: true, status: 500, meaning: 'an unexpected failure: retry' },
  unauthorized: { status: 401, meaning: 'missing, invalid or expired token, or one without exp (reason says which)' },
  forbidden: { status: 403, meaning: 'the token may not use this, or the Origin is not allowed' },
  not_found: { status: 404, meaning: 'no such route or election' },
  too_many_connections: { status: 429, meaning: "the token's sub holds MAX_CONNECTIONS_PER_SUB sockets already" },
} as const satisfies Record<ErrorCode, ErrorSpec>;

/** Codes sent in WebSocket error frames. */
export type FrameErrorCode = { [K in ErrorCode]: (typeof ERRORS)[K] extends { frame: true } ? K : never }[ErrorCode];
/** Codes of HTTP error bodies. */
export type HttpErrorCode = { [K in ErrorCode]: (typeof ERRORS)[K] extends { status: number } ? K : never }[ErrorCode];

const specs = Object.entries(ERRORS) as Array<[ErrorCode, ErrorSpec]>;
/** The frame codes, in table order. */
export const FRAME_ERROR_CODES = specs.filter(([, e]) => e.frame).map(([c]) => c) as FrameErrorCode[];
/** The HTTP codes, by status. */
export const HTTP_ERROR_CODES = specs
  .filter(([, e]) => e.status !== undefined)
  .sort(([, a], [, b]) => (a.status ?? 0) - (b.status ?? 0))
  .map(([c]) => c) as HttpErrorCode[];

/** An HTTP error reply: the code's status and `{"error":code,"reason":...}` (reason when given). */
export function httpError(code: HttpErrorCode, reason?: string): { status: number; body: string } {
  return {
    status: ERRORS[code].status,
    body: JSON.stringify(reason === undefined ? { error: code } : { error: code, reason }),
  };
}

/**
 * WebSocket close codes (README, WebSocket protocol). After 1001, 4008 and 4009 a client reconnects
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
