import { readFileSync } from 'node:fs';
import uWS from 'uWebSockets.js';
import type { Config, WsCompression } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { Authenticator } from '../auth/jwt.ts';
import type { ConnectionLimiter } from '../auth/limits.ts';
import type { CommitteeDirectory } from '../db/committees.ts';
import type { Routes, HttpReply } from '../http/routes.ts';
import { bearer } from '../http/routes.ts';
import { type StaticFiles, staticReply } from '../http/static.ts';
import { type Delivery, type Session, type Sock, CursorError, UnavailableError } from './delivery.ts';
import { ClientFrame } from '../events/schema.ts';
import { type Claims, type Id, admitByClaims, claimTopics, holdsElection, parseTopic } from '../events/topics.ts';
import { type Position, decodeCursor, encodeCursor } from '../db/cursor.ts';
import { CloseCode, ErrorCode, errorMessage } from '../errors.ts';

type Ws = uWS.WebSocket<Session> & Sock;

const STATUS: Record<number, string> = {
  200: '200 OK', 400: '400 Bad Request', 401: '401 Unauthorized', 403: '403 Forbidden', 404: '404 Not Found',
  405: '405 Method Not Allowed', 429: '429 Too Many Requests', 500: '500 Internal Server Error', 503: '503 Service Unavailable',
};

const BAD_FRAMES_BEFORE_CLOSE = 10;
const KNOWN_TYPES = new Set(['ping', 'subscribe', 'unsubscribe']);

export type { StaticFiles } from '../http/static.ts';

/**
 * Sockets this node accepts: MAX_CONNECTIONS, else the open-file limit less headroom for the
 * database, Redis and the listen socket. At the fd limit uWS cannot accept and spins; refusing
 * with 503 lets the load balancer send the client to another node.
 */
export function connectionCap(configured: number | undefined): number {
  if (configured !== undefined) return configured;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m?.[1]) return Math.max(100, Number(m[1]) - 256);
  } catch {
    // Not Linux: no known limit to stay under.
  }
  return Number.MAX_SAFE_INTEGER;
}

/**
 * uWS's permessage-deflate option for `WS_COMPRESSION`. Negotiated only with clients that offer
 * the extension; the others get the same frames uncompressed. Client frames (small: ping,
 * subscribe) use the shared decompressor, which asks clients not to keep their context.
 */
export function compressionOption(mode: WsCompression): uWS.CompressOptions {
  const compressor: Record<WsCompression, uWS.CompressOptions> = {
    off: uWS.DISABLED,
    shared: uWS.SHARED_COMPRESSOR,
    dedicated: uWS.DEDICATED_COMPRESSOR_4KB,
    'dedicated-3kb': uWS.DEDICATED_COMPRESSOR_3KB,
    'dedicated-4kb': uWS.DEDICATED_COMPRESSOR_4KB,
    'dedicated-8kb': uWS.DEDICATED_COMPRESSOR_8KB,
    'dedicated-16kb': uWS.DEDICATED_COMPRESSOR_16KB,
    'dedicated-32kb': uWS.DEDICATED_COMPRESSOR_32KB,
    'dedicated-64kb': uWS.DEDICATED_COMPRESSOR_64KB,
    'dedicated-128kb': uWS.DEDICATED_COMPRESSOR_128KB,
    'dedicated-256kb': uWS.DEDICATED_COMPRESSOR_256KB,
  };
  return mode === 'off' ? uWS.DISABLED : compressor[mode] | uWS.SHARED_DECOMPRESSOR;
}

/** setTimeout's largest delay (2^31 - 1 ms, ~24.8 days); a longer one fires at once (Node: after 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Calls `fire` at `atMs` (epoch ms), however far away: a delay past setTimeout's range is
 * waited out in chunks, each re-arming the next. `s.expiry` always holds the pending chunk,
 * so `clearTimeout(s.expiry)` cancels it.
 */
export function armExpiry(s: { expiry: NodeJS.Timeout | undefined }, atMs: number, fire: () => void): void {
  const ms = atMs - Date.now();
  if (ms > MAX_TIMER_MS) {
    s.expiry = setTimeout(() => armExpiry(s, atMs, fire), MAX_TIMER_MS);
  } else {
    s.expiry = setTimeout(fire, Math.max(0, ms));
  }
}

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
 * The uWebSockets.js boundary: HTTP routes, the WebSocket upgrade (authentication happens
 * here, before any socket exists), client frames, and the socket lifecycle.
 */
export function createHubServer(deps: {
  config: Config;
  log: Logger;
  metrics: Metrics;
  auth: Authenticator;
  limiter: ConnectionLimiter;
  committees: CommitteeDirectory;
  routes: Routes;
  delivery: (app: uWS.TemplatedApp, sockets: ReadonlySet<Sock>) => Delivery;
  position: () => Position | undefined;
  staticFiles?: StaticFiles;
}) {
  const { config, log, metrics, auth, limiter, committees, routes } = deps;
  const app = uWS.App();
  const sockets = new Set<Ws>();
  const delivery = deps.delivery(app, sockets);
  let listenSocket: uWS.us_listen_socket | undefined;
  let accepting = true;
  let nextId = 1;
  const maxSockets = connectionCap(config.MAX_CONNECTIONS);
  let upgrading = 0;

  // ---- HTTP ---------------------------------------------------------------------------

  const write = (res: uWS.HttpResponse, reply: HttpReply) => {
    res.cork(() => {
      res
        .writeStatus(STATUS[reply.status] ?? `${reply.status} Status`)
        .writeHeader('Content-Type', reply.contentType ?? 'application/json')
        .writeHeader('Cache-Control', 'no-store')
        .end(reply.body);
    });
  };

  /** Async handlers: headers are copied first; the response is written only if still open. */
  const get = (
    pattern: string,
    fn: (read: { header: (h: string) => string; param: (i: number) => string; query: (k: string) => string | undefined }) => Promise<HttpReply> | HttpReply,
  ) => {
    app.get(pattern, (res, req) => {
      const headers = new Map<string, string>();
      req.forEach((k, v) => headers.set(k, v));
      const params = [req.getParameter(0) ?? '', req.getParameter(1) ?? ''];
      const query = new URLSearchParams(req.getQuery() ?? '');
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      Promise.resolve()
        .then(() => fn({ header: (h) => headers.get(h) ?? '', param: (i) => params[i] ?? '', query: (k) => query.get(k) ?? undefined }))
        .then(
          (reply) => {
            if (!aborted) write(res, reply);
          },
          (err: unknown) => {
            log.error({ err: errorMessage(err), path: pattern }, 'request failed');
            if (!aborted) write(res, { status: 500, body: JSON.stringify({ error: 'internal' }) });
          },
        );
    });
  };

  const tokenOf = (r: { header: (h: string) => string; query: (k: string) => string | undefined }) =>
    bearer(r.header('authorization')) ?? r.query('token');

  get('/health', () => routes.health());
  get('/ready', () => routes.ready());
  // No /metrics here: it has its own listener (METRICS_PORT, src/metrics/server.ts); this port answers 404.
  get('/admin/health', (r) => routes.adminHealth(bearer(r.header('authorization'))));
  get('/dashboard/:id', (r) => routes.dashboard(r.param(0), tokenOf(r)));
  get('/*', () => ({ status: 404, body: JSON.stringify({ error: 'not_found' }) }));
  if (deps.staticFiles) {
    const files = deps.staticFiles;
    for (const path of ['/', '/app.js', '/app.css']) {
      app.get(path, (res, req) => {
        const f = files(path);
        const reply = f
          ? staticReply(f, {
              acceptEncoding: req.getHeader('accept-encoding'),
              ifNoneMatch: req.getHeader('if-none-match'),
              version: new URLSearchParams(req.getQuery() ?? '').get('v') ?? undefined,
            })
          : undefined;
        res.cork(() => {
          if (!reply) {
            res.writeStatus('404 Not Found').end('not built: run npm run build:web');
            return;
          }
          res.writeStatus(reply.status === 304 ? '304 Not Modified' : '200 OK');
          for (const [k, v] of reply.headers) res.writeHeader(k, v);
          if (reply.body) res.end(reply.body);
          else res.endWithoutBody();
        });
      });
    }
  }

  // ---- WebSocket ----------------------------------------------------------------------

  const frame = (ws: Ws, body: Record<string, unknown>) => delivery.send(ws, JSON.stringify(body), String(body.type));

  const clientError = (ws: Ws, code: ErrorCode, message: string) => {
    const s = ws.getUserData();
    if (s.closed) return;
    metrics.frameErrors.inc({ code });
    frame(ws, { type: 'error', code, message });
    if (++s.badFrames >= BAD_FRAMES_BEFORE_CLOSE && !s.closed) {
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
      if (typeof type !== 'string' || !KNOWN_TYPES.has(type)) return clientError(ws, ErrorCode.unknownType, 'type must be ping, subscribe or unsubscribe');
      return clientError(ws, ErrorCode.badFrame, parsed.error.issues.map((i) => `${i.path.join('.') || 'frame'}: ${i.message}`).join('; ').slice(0, 300));
    }
    const f = parsed.data;
    if (f.type === 'ping') {
      frame(ws, { type: 'pong' });
      return;
    }
    // Subscription changes run one at a time per socket, in arrival order.
    s.ops = s.ops
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
      });
  };

  const refuse = (res: uWS.HttpResponse, status: number, reason: string) => {
    res.cork(() => {
      res.writeStatus(STATUS[status] ?? `${status}`).writeHeader('Content-Type', 'application/json').end(JSON.stringify({ error: reason }));
    });
  };

  app.ws<Session>('/ws', {
    compression: compressionOption(config.WS_COMPRESSION),
    // uWS answers an oversize frame by dropping the connection (the client sees 1006), so
    // it gets a higher hard cap and the contract's limit is enforced below with a 1009 close.
    maxPayloadLength: Math.max(1024 * 1024, config.MAX_PAYLOAD_BYTES * 4),
    idleTimeout: 120,
    sendPingsAutomatically: true,
    // uWS silently skips a subscriber over maxBackpressure: keep that far above our own
    // limit, which the sweep enforces by closing with 4008 (the client then resumes).
    maxBackpressure: Math.max(64 * 1024 * 1024, config.MAX_BACKPRESSURE_BYTES * 16),

    upgrade: (res, req, context) => {
      const key = req.getHeader('sec-websocket-key');
      const protocols = req.getHeader('sec-websocket-protocol');
      const extensions = req.getHeader('sec-websocket-extensions');
      const origin = req.getHeader('origin');
      const authorization = req.getHeader('authorization');
      const query = new URLSearchParams(req.getQuery() ?? '');
      const remote = Buffer.from(res.getRemoteAddressAsText()).toString();
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      upgrading++;
      void (async () => {
        const fail = (status: number, reason: string, sub?: string) => {
          metrics.authFailures.inc({ reason });
          log.info({ event: 'ws_refused', status, reason, sub, remote }, 'websocket refused');
          if (!aborted) refuse(res, status, reason);
        };
        if (!accepting) return fail(503, 'shutting_down');
        if (sockets.size + upgrading > maxSockets) return fail(503, 'node_full');
        if (origin && !config.ALLOWED_ORIGINS.includes('*') && !config.ALLOWED_ORIGINS.includes(origin)) return fail(403, 'origin');
        const offered = protocols.split(',').map((p) => p.trim()).filter(Boolean);
        const viaProtocol = offered.find((p) => p.startsWith('bearer.'));
        const token = query.get('token') ?? bearer(authorization) ?? viaProtocol?.slice('bearer.'.length);
        const result = await auth.verify(token ?? undefined);
        if (!result.ok) return fail(401, result.reason);
        const claims: Claims = result.claims;
        const lease = await limiter.acquire(claims.sub);
        if (!lease) return fail(429, 'too_many_connections', claims.sub);
        if (aborted || !accepting || !deps.position()) {
          lease.release();
          if (!aborted) refuse(res, 503, 'not_ready');
          return;
        }
        const session: Session = {
          id: nextId++,
          claims,
          remote,
          topics: new Set(),
          cover: new Set(),
          closed: false,
          ops: Promise.resolve(),
          drained: undefined,
          badFrames: 0,
          windowStart: 0,
          windowCount: 0,
          expiry: undefined,
          lease,
          autoSubscribe: query.get('subscribe') !== 'none',
        };
        res.cork(() => res.upgrade(session, key, viaProtocol ?? '', extensions, context));
      })().catch((err: unknown) => {
        log.error({ err: errorMessage(err) }, 'upgrade failed');
        if (!aborted) refuse(res, 500, 'internal');
      }).finally(() => upgrading--);
    },

    open: (ws) => {
      const w = ws as Ws;
      const s = w.getUserData();
      sockets.add(w);
      metrics.connections.inc();
      metrics.connectionsOpened.inc();
      metrics.connectionsByRole.inc({ role: s.claims.role ?? 'none' });
      log.info({ event: 'ws_open', sub: s.claims.sub, role: s.claims.role, remote: s.remote }, 'websocket opened');
      // Every accepted token has an exp (auth refuses one without).
      if (s.claims.exp !== undefined) {
        armExpiry(s, s.claims.exp * 1000, () => {
          if (!s.closed) w.end(CloseCode.tokenExpired, 'token expired');
        });
      }
      // uWS bug (uNetworking/uWebSockets#1928, fixed upstream by PR #1929, not in this build):
      // after an async upgrade inside res.cork(), cork() reads a flag from memory that now
      // belongs to the WebSocket; what open() writes there (a send) can make it close the new
      // socket (1006). So nothing touches the socket until cork() has returned; subscription
      // frames queue behind this (s.ops), so connection_success always comes first.
      s.ops = new Promise<void>((resolve) =>
        setImmediate(() => {
          resolve();
          if (s.closed) return;
          let dropped = 0;
          if (s.autoSubscribe) {
            const auto = autoTopics(s.claims, config.MAX_TOPICS_PER_CONNECTION);
            dropped = auto.dropped;
            for (const t of auto.topics) s.topics.add(t);
            delivery.applyCover(w);
          }
          const cursor = deps.position();
          frame(w, { type: 'connection_success', sub: s.claims.sub, topics: [...s.topics], cursor: cursor ? encodeCursor(cursor) : '' });
          if (dropped > 0) {
            // Not the client's fault: no bad-frame strike, but the client must know.
            metrics.frameErrors.inc({ code: ErrorCode.tooManyTopics });
            frame(w, {
              type: 'error',
              code: ErrorCode.tooManyTopics,
              message: `the token names ${s.topics.size + dropped} topics; subscribed ${s.topics.size} (at most ${config.MAX_TOPICS_PER_CONNECTION} per connection)`,
            });
          }
        }),
      );
    },

    message: (ws, message, isBinary) => {
      const w = ws as Ws;
      const s = w.getUserData();
      const now = Date.now();
      if (now - s.windowStart >= 1000) {
        s.windowStart = now;
        s.windowCount = 0;
      }
      if (++s.windowCount > config.MAX_MESSAGES_PER_SECOND) return clientError(w, ErrorCode.rateLimited, `at most ${config.MAX_MESSAGES_PER_SECOND} frames per second`);
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

    drain: (ws) => delivery.drained(ws as Ws),

    close: (ws, code) => {
      const w = ws as Ws;
      const s = w.getUserData();
      s.closed = true;
      sockets.delete(w);
      delivery.closed(w);
      clearTimeout(s.expiry);
      s.drained?.();
      s.lease.release();
      metrics.connections.dec();
      metrics.connectionsClosed.inc({ code: String(code) });
      metrics.connectionsByRole.dec({ role: s.claims.role ?? 'none' });
      log.info({ event: 'ws_close', sub: s.claims.sub, role: s.claims.role, remote: s.remote, code }, 'websocket closed');
    },
  });

  const sweep = setInterval(() => delivery.sweep(), 50);

  return {
    delivery,
    listen: (host: string, port: number) =>
      new Promise<number>((resolve, reject) => {
        app.listen(host, port, (token) => {
          if (!token) return reject(new Error(`cannot listen on ${host}:${port}`));
          listenSocket = token;
          resolve(uWS.us_socket_local_port(token));
        });
      }),
    connections: () => sockets.size,
    topicCounts(): Record<string, number> {
      const counts: Record<string, number> = {};
      for (const ws of sockets) for (const t of ws.getUserData().topics) counts[t] = (counts[t] ?? 0) + 1;
      return counts;
    },
    /** Stops accepting upgrades and closes the listen socket. */
    stopAccepting() {
      accepting = false;
      if (listenSocket) uWS.us_listen_socket_close(listenSocket);
      listenSocket = undefined;
    },
    /** Closes every socket with `code` ("going away, reconnect and resume"). */
    async closeAll(code: number, reason: string, timeoutMs: number) {
      for (const ws of [...sockets]) {
        const s = ws.getUserData();
        if (!s.closed) ws.end(code, reason);
      }
      const deadline = Date.now() + timeoutMs;
      while (sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    },
    /** Last: after the reader has stopped publishing into the app. */
    close() {
      clearInterval(sweep);
      // Older builds lack App.close(); the listen socket is already closed either way.
      (app as unknown as { close?: () => void }).close?.();
    },
  };
}

export type HubServer = ReturnType<typeof createHubServer>;
