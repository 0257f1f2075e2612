/*
 * hub/: the uWebSockets.js boundary. server.ts is the app and the socket lifecycle; http.ts the
 * HTTP plumbing and routes; upgrade.ts the upgrade (the token is verified before any socket
 * exists); protocol.ts the client frames; session.ts the per-socket state (written only there);
 * delivery.ts live fan-out, replay and backpressure; ring.ts the replay ring; uws.ts the only
 * module that loads the native uWebSockets.js build. The hub never sees the database: replays
 * page through `History`, the reader's position through `PositionSource`.
 *
 * Lifecycle: `startHub` creates the server (the app and its open sockets), then the reader and
 * delivery that publish into it, then `serve` wires routes, upgrade and protocol; on stop,
 * readiness fails, the listen socket closes, sockets are closed with 1001, the reader stops, and
 * the app closes last. Invariants (docs/ARCHITECTURE.md sections 3, 4, 6, 7): each event is
 * serialized once and fanned out by uWS topics, no per-socket loop per event; a socket gets
 * every event at most once (covers); replay and live meet in one synchronous step; a slow socket
 * is closed with 4008 and a resume that cannot be completed with 4009, never skipped.
 */
import { uWS, uwsBuild } from './uws.ts';
import type { Config, WsCompression } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { Authenticator } from '../auth/jwt.ts';
import type { ConnectionLimiter } from '../auth/limits.ts';
import type { Routes } from '../http/routes.ts';
import type { StaticFiles } from '../http/static.ts';
import type { Delivery, Publisher, Sock } from './delivery.ts';
import type { Position } from '../events/position.ts';
import type { Id } from '../events/topics.ts';
import { CloseCode } from '../errors.ts';
import { serveHttp } from './http.ts';
import { type CommitteeElections, createProtocol } from './protocol.ts';
import { type Session, armExpiry, enqueue, markClosed } from './session.ts';
import { createUpgrade } from './upgrade.ts';

type Ws = uWS.WebSocket<Session> & Sock;

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

/** What `serve` wires to the sockets: everything the upgrade and the client protocol need. */
export type SocketHandlers = {
  routes: Routes;
  staticFiles?: StaticFiles | undefined;
  delivery: Delivery;
  auth: Authenticator;
  limiter: ConnectionLimiter;
  committees: CommitteeElections;
  /** How far the reader has published; upgrades wait for it. */
  position: () => Position | undefined;
  /**
   * A socket starts receiving these elections' `dashboard_update` frames (it subscribed, or
   * resubscribed or resumed, `election:E` or `dashboard:E`, or was auto-subscribed): called
   * synchronously as it goes live, so what is sent here comes before any later update.
   */
  onDashboards?: ((ws: Sock, elections: Id[]) => void) | undefined;
};

/**
 * The uWebSockets.js boundary and the socket lifecycle: the app and its open sockets exist
 * first (delivery publishes into them); `serve` then wires the HTTP routes, the upgrade
 * (authentication happens there, before any socket exists) and the client protocol to it.
 */
export function createHubServer(deps: { config: Config; log: Logger; metrics: Metrics; maxSockets: number }) {
  const { config, log, metrics, maxSockets } = deps;
  log.info({ uws: uwsBuild.package, binary: uwsBuild.binary }, 'uWebSockets.js native build loaded');
  const app = uWS.App();
  const sockets = new Set<Ws>();
  let listenSocket: uWS.us_listen_socket | undefined;
  let accepting = true;
  let sweep: NodeJS.Timeout | undefined;

  const serve = (h: SocketHandlers) => {
    if (sweep) throw new Error('the hub server is already serving');
    const { delivery } = h;
    serveHttp(app, { routes: h.routes, log, staticFiles: h.staticFiles });
    const upgrade = createUpgrade({
      config,
      log,
      metrics,
      auth: h.auth,
      limiter: h.limiter,
      position: h.position,
      accepting: () => accepting,
      open: () => sockets.size,
      anyOpen: () => sockets.values().next().value,
      maxSockets,
    });
    const protocol = createProtocol({
      config,
      log,
      metrics,
      delivery,
      committees: h.committees,
      position: h.position,
      onDashboards: h.onDashboards,
    });

    app.ws<Session>('/ws', {
      compression: compressionOption(config.WS_COMPRESSION),
      // uWS answers an oversize frame by dropping the connection (the client sees 1006), so
      // it gets a higher hard cap and MAX_PAYLOAD_BYTES is enforced by protocol.ts with a 1009 close.
      maxPayloadLength: Math.max(1024 * 1024, config.MAX_PAYLOAD_BYTES * 4),
      idleTimeout: 120,
      sendPingsAutomatically: true,
      // uWS silently skips a subscriber over maxBackpressure: keep that far above our own
      // limit, which the sweep enforces by closing with 4008 (the client then resumes).
      maxBackpressure: Math.max(64 * 1024 * 1024, config.MAX_BACKPRESSURE_BYTES * 16),

      upgrade,

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
        // Nothing is sent from open() itself (with the cork() bug that upgradeAfterAwait avoids, a
        // send here made it close the new socket); subscription frames queue behind this (s.ops),
        // so connection_success always comes first.
        enqueue(
          s,
          () =>
            new Promise<void>((resolve) =>
              setImmediate(() => {
                resolve();
                protocol.welcome(w);
              }),
            ),
        );
      },

      message: (ws, message, isBinary) => protocol.message(ws as Ws, message, isBinary),

      drain: (ws) => delivery.drained(ws as Ws),

      close: (ws, code) => {
        const w = ws as Ws;
        const s = w.getUserData();
        markClosed(s);
        sockets.delete(w);
        delivery.closed(w);
        clearTimeout(s.expiry);
        s.drained?.();
        s.lease.release();
        metrics.connections.dec();
        metrics.connectionsClosed.inc({ code: String(code) });
        metrics.connectionsByRole.dec({ role: s.claims.role ?? 'none' });
        log.info(
          { event: 'ws_close', sub: s.claims.sub, role: s.claims.role, remote: s.remote, code },
          'websocket closed',
        );
      },
    });

    sweep = setInterval(() => delivery.sweep(), 50);
  };

  return {
    /** Where delivery publishes: uWS topics, serialized once and fanned out by uWS. */
    publisher: app as Publisher,
    /** The open sockets (delivery walks them for its buffer checks). */
    sockets: sockets as ReadonlySet<Sock>,
    serve,
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
    /**
     * Closes every socket with `code` ("going away, reconnect and resume") and waits until their
     * close handlers ran, or until `signal` aborts (the shutdown step's timeout).
     */
    async closeAll(code: number, reason: string, signal: AbortSignal) {
      for (const ws of [...sockets]) {
        const s = ws.getUserData();
        if (!s.closed) ws.end(code, reason);
      }
      while (sockets.size > 0 && !signal.aborted) await new Promise((r) => setTimeout(r, 20));
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
