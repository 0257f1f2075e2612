import type { Config } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import { ClientFrame } from '../events/schema.ts';
import {
  type Claims,
  type Id,
  admitByClaims,
  claimTopics,
  dashboardsOf,
  holdsElection,
  parseTopic,
} from '../events/topics.ts';
import { type Position, decodeCursor, encodeCursor } from '../events/position.ts';
import { CloseCode, ErrorCode, type FrameErrorCode, errorMessage } from '../errors.ts';
import { type Delivery, type Sock, CursorError, UnavailableError } from './delivery.ts';
import { addTopics, enqueue, strike, withinRate } from './session.ts';

const BAD_FRAMES_BEFORE_CLOSE = 10;
const KNOWN_TYPES = new Set(['ping', 'subscribe', 'unsubscribe']);

/** What admission asks of the committee directory (src/db/committees.ts): each committee's election, null for none. */
export type CommitteeElections = { electionsOf(committeeIds: readonly Id[]): Promise<ReadonlyMap<Id, Id | null>> };

/** The protocol needs of a socket only what delivery does. */
type Ws = Sock;

/**
 * What a connection auto-subscribes: the claims' topics, at most `cap` of them. Past the cap
 * it keeps `user:{sub}` and the first others in claim order (elections, then committees);
 * `dropped` says how many were left out (the client is told with `too_many_topics`).
 */
export function autoTopics(claims: Claims, cap: number): { topics: string[]; dropped: number } {
  const all = [...new Set(claimTopics(claims))];
  if (all.length <= cap) return { topics: all, dropped: 0 };
  const own = `user:${claims.sub}`;
  const topics = [...all.filter((t) => t !== own).slice(0, cap - 1), own];
  return { topics, dropped: all.length - topics.length };
}

/**
 * The client protocol: frames parsed and validated, subscribe/unsubscribe checked against the
 * claims and run one at a time per socket, the rate limit, error answers (a client that keeps
 * sending bad frames is closed with 1008).
 */
export function createProtocol(deps: {
  config: Config;
  log: Logger;
  metrics: Metrics;
  delivery: Delivery;
  committees: CommitteeElections;
  position: () => Position | undefined;
  /** A socket starts receiving these elections' dashboards (see SocketHandlers in server.ts). */
  onDashboards?: ((ws: Sock, elections: Id[]) => void) | undefined;
}) {
  const { config, log, metrics, delivery, committees } = deps;

  const frame = (ws: Ws, body: Record<string, unknown>) => delivery.send(ws, JSON.stringify(body), String(body.type));

  const clientError = (ws: Ws, code: FrameErrorCode, message: string) => {
    const s = ws.getUserData();
    if (s.closed) return;
    metrics.frameErrors.inc({ code });
    frame(ws, { type: 'error', code, message });
    if (strike(s) >= BAD_FRAMES_BEFORE_CLOSE && !s.closed) {
      log.info({ sub: s.claims.sub, remote: s.remote }, 'closing misbehaving client (1008)');
      ws.end(CloseCode.policy, 'repeated bad frames');
    }
  };

  /** Well-formed (one spelling per topic), allowed, within the topic limit; claims before any lookup. */
  const checkTopics = async (ws: Ws, topics: string[]): Promise<string[] | undefined> => {
    const s = ws.getUserData();
    const unique = [...new Set(topics)];
    const parsed = unique.map((t) => [t, parseTopic(t)] as const);
    const bad = parsed.find(([, p]) => !p);
    if (bad) {
      clientError(ws, ErrorCode.badTopic, `not a topic: ${String(bad[0]).slice(0, 64)}`);
      return undefined;
    }
    const lookups: Array<[string, Id]> = [];
    for (const [t, p] of parsed) {
      if (!p) continue;
      const v = admitByClaims(s.claims, p);
      if (v === false) {
        clientError(ws, ErrorCode.forbiddenTopic, `not allowed: ${t}`);
        return undefined;
      }
      if (v === 'lookup' && p.kind === 'committee') lookups.push([t, p.id]);
    }
    const after = new Set([...s.topics, ...unique]).size;
    if (after > config.MAX_TOPICS_PER_CONNECTION) {
      clientError(ws, ErrorCode.tooManyTopics, `at most ${config.MAX_TOPICS_PER_CONNECTION} topics per connection`);
      return undefined;
    }
    if (lookups.length > 0) {
      // Only committees reached through an election claim: their election, as the committees
      // table said at most the directory's TTL ago (delivery then follows each row's election).
      const elections = await committees.electionsOf(lookups.map(([, id]) => id));
      if (s.closed) return undefined;
      const forbidden = lookups.find(([, id]) => !holdsElection(s.claims, elections.get(id)));
      if (forbidden) {
        clientError(ws, ErrorCode.forbiddenTopic, `not allowed: ${forbidden[0]}`);
        return undefined;
      }
    }
    return unique;
  };

  const onSubscribe = async (ws: Ws, topics: string[], sinceText: string | undefined) => {
    const since = sinceText === undefined ? undefined : decodeCursor(sinceText);
    if (sinceText !== undefined && since === undefined) return clientError(ws, ErrorCode.badCursor, 'not a cursor');
    try {
      const ok = await checkTopics(ws, topics);
      if (!ok) return;
      await delivery.subscribe(ws, ok, since, (cursor, resync) => {
        if (resync) frame(ws, { type: 'resync', topics: ok });
        frame(ws, { type: 'subscribed', topics: ok, cursor: encodeCursor(cursor) });
        const elections = dashboardsOf(ok);
        if (elections.length > 0) deps.onDashboards?.(ws, elections);
      });
    } catch (err) {
      if (err instanceof CursorError) return clientError(ws, ErrorCode.badCursor, err.message);
      // A resume the hub could not serve (e.g. the committee lookup failed): close with
      // 4009 so that every client, not only the SDK, reconnects and resumes.
      if (since !== undefined) return delivery.resumeFailed(ws, err);
      if (err instanceof UnavailableError) return clientError(ws, ErrorCode.unavailable, err.message);
      throw err;
    }
  };

  const onMessage = (ws: Ws, text: string) => {
    const s = ws.getUserData();
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      return clientError(ws, ErrorCode.badJson, 'frame is not JSON');
    }
    const parsed = ClientFrame.safeParse(raw);
    if (!parsed.success) {
      const type = (raw as { type?: unknown } | null)?.type;
      if (typeof type !== 'string' || !KNOWN_TYPES.has(type))
        return clientError(ws, ErrorCode.unknownType, 'type must be ping, subscribe or unsubscribe');
      return clientError(
        ws,
        ErrorCode.badFrame,
        parsed.error.issues
          .map((i) => `${i.path.join('.') || 'frame'}: ${i.message}`)
          .join('; ')
          .slice(0, 300),
      );
    }
    const f = parsed.data;
    if (f.type === 'ping') {
      frame(ws, { type: 'pong' });
      return;
    }
    // Subscription changes run one at a time per socket, in arrival order.
    enqueue(s, (ops) =>
      ops
        .then(async () => {
          if (s.closed) return;
          if (f.type === 'subscribe') await onSubscribe(ws, f.topics, f.since);
          else {
            const topics = [...new Set(f.topics)];
            const bad = topics.find((t) => !parseTopic(t));
            if (bad !== undefined) return clientError(ws, ErrorCode.badTopic, `not a topic: ${bad.slice(0, 64)}`);
            delivery.unsubscribe(ws, topics);
            frame(ws, { type: 'unsubscribed', topics });
          }
        })
        .catch((err: unknown) => {
          log.error({ err: errorMessage(err), sub: s.claims.sub }, 'subscription change failed');
          clientError(ws, ErrorCode.internal, 'subscription failed; retry');
        }),
    );
  };

  return {
    /** First frames of an open socket: auto-subscribe, `connection_success` (see the server's open handler). */
    welcome(w: Ws) {
      const s = w.getUserData();
      if (s.closed) return;
      let dropped = 0;
      if (s.autoSubscribe) {
        const auto = autoTopics(s.claims, config.MAX_TOPICS_PER_CONNECTION);
        dropped = auto.dropped;
        addTopics(s, auto.topics);
        delivery.applyCover(w);
      }
      const cursor = deps.position();
      frame(w, {
        type: 'connection_success',
        sub: s.claims.sub,
        topics: [...s.topics],
        cursor: cursor ? encodeCursor(cursor) : '',
      });
      if (dropped > 0) {
        // Not the client's fault: no bad-frame strike, but the client must know.
        metrics.frameErrors.inc({ code: ErrorCode.tooManyTopics });
        frame(w, {
          type: 'error',
          code: ErrorCode.tooManyTopics,
          message: `the token names ${s.topics.size + dropped} topics; subscribed ${s.topics.size} (at most ${config.MAX_TOPICS_PER_CONNECTION} per connection)`,
        });
      }
      const elections = dashboardsOf(s.topics);
      if (elections.length > 0) deps.onDashboards?.(w, elections);
    },

    /** A client frame, from the uWS message handler. */
    message(w: Ws, message: ArrayBuffer, isBinary: boolean) {
      const s = w.getUserData();
      if (!withinRate(s, Date.now(), config.MAX_MESSAGES_PER_SECOND))
        return clientError(w, ErrorCode.rateLimited, `at most ${config.MAX_MESSAGES_PER_SECOND} frames per second`);
      if (message.byteLength > config.MAX_PAYLOAD_BYTES) {
        metrics.frameErrors.inc({ code: 'too_big' });
        return w.end(CloseCode.tooBig, `frame over ${config.MAX_PAYLOAD_BYTES} bytes`);
      }
      if (isBinary) return clientError(w, ErrorCode.badFrame, 'frames must be JSON text');
      try {
        onMessage(w, Buffer.from(message).toString('utf8'));
      } catch (err) {
        log.error({ err: errorMessage(err) }, 'frame handling failed');
        clientError(w, ErrorCode.internal, 'internal error');
      }
    },
  };
}

export type Protocol = ReturnType<typeof createProtocol>;
