import type { us_socket_context_t } from 'uWebSockets.js';
import { type uWS, upgradeAfterAwait } from './uws.ts';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics/index.ts';
import type { Authenticator } from '../auth/jwt.ts';
import type { ConnectionLimiter } from '../auth/limits.ts';
import { bearer } from '../http/routes.ts';
import type { Claims } from '../events/topics.ts';
import type { Position } from '../events/position.ts';
import { ERRORS, ErrorCode, type HttpErrorCode, errorMessage } from '../errors.ts';
import { refuse } from './http.ts';
import { createSession } from './session.ts';

/**
 * The WebSocket upgrade: authentication happens here, before any socket exists (the async
 * pattern: headers copied first, `onAborted`, then the upgrade). Refused with an HTTP error
 * while shutting down, when the node is full, for a foreign origin, a bad token, a `sub` over
 * its connection allowance, or before the hub reads the outbox.
 */
export function createUpgrade(deps: {
  config: Config;
  log: Logger;
  metrics: Metrics;
  auth: Authenticator;
  limiter: ConnectionLimiter;
  position: () => Position | undefined;
  /** False once the hub stops accepting (shutdown). */
  accepting: () => boolean;
  /** Sockets open now; with the upgrades in flight at most `maxSockets`. */
  open: () => number;
  /** Any open socket, to cork the upgrade on (see upgradeAfterAwait in uws.ts). */
  anyOpen: () => uWS.WebSocket<unknown> | undefined;
  maxSockets: number;
}) {
  const { config, log, metrics, auth, limiter } = deps;
  let nextId = 1;
  let upgrading = 0;
  return (res: uWS.HttpResponse, req: uWS.HttpRequest, context: us_socket_context_t) => {
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
      // `reason` is also the hub_auth_failures_total label (a bounded list, src/metrics).
      const fail = (code: HttpErrorCode, reason?: string, sub?: string) => {
        metrics.authFailures.inc({ reason: reason ?? code });
        log.info({ event: 'ws_refused', status: ERRORS[code].status, code, reason, sub, remote }, 'websocket refused');
        if (!aborted) refuse(res, code, reason);
      };
      if (!deps.accepting()) return fail(ErrorCode.unavailable, 'shutting_down');
      if (deps.open() + upgrading > deps.maxSockets) return fail(ErrorCode.unavailable, 'node_full');
      if (origin && !config.ALLOWED_ORIGINS.includes('*') && !config.ALLOWED_ORIGINS.includes(origin))
        return fail(ErrorCode.forbidden, 'origin');
      const offered = protocols
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean);
      const viaProtocol = offered.find((p) => p.startsWith('bearer.'));
      const token = query.get('token') ?? bearer(authorization) ?? viaProtocol?.slice('bearer.'.length);
      const result = await auth.verify(token ?? undefined);
      if (!result.ok) return fail(ErrorCode.unauthorized, result.reason);
      const claims: Claims = result.claims;
      const lease = await limiter.acquire(claims.sub);
      if (!lease) return fail(ErrorCode.tooManyConnections, undefined, claims.sub);
      if (aborted || !deps.accepting() || !deps.position()) {
        lease.release();
        if (!aborted) refuse(res, ErrorCode.unavailable, 'not_ready');
        return;
      }
      const session = createSession({
        id: nextId++,
        claims,
        remote,
        lease,
        autoSubscribe: query.get('subscribe') !== 'none',
      });
      upgradeAfterAwait(res, () => res.upgrade(session, key, viaProtocol ?? '', extensions, context), deps.anyOpen());
    })()
      .catch((err: unknown) => {
        log.error({ err: errorMessage(err) }, 'upgrade failed');
        if (!aborted) refuse(res, ErrorCode.internal);
      })
      .finally(() => upgrading--);
  };
}
