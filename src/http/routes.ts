/*
 * http/: the HTTP routes as plain functions of their inputs (this file) and the static dashboard
 * page (static.ts); hub/http.ts wires both to uWebSockets.js.
 *
 * Lifecycle: made once per hub; the static files are built (when stale) and compressed at
 * start-up, not per request. Invariants: a protected route checks its token (and the token's
 * rights to what it names) before any work; `/ready` carries only a reason class (error texts
 * name databases and hosts and stay behind the admin token in `/admin/health`).
 */
import type { Authenticator } from '../auth/jwt.ts';
import type { DashboardCache } from '../cache/dashboard.ts';
import type { Metrics } from '../metrics/index.ts';
import type { Logger } from '../log.ts';
import { type ElectionOf, isAdmin, mayUse, parseId } from '../events/topics.ts';
import { ErrorCode, errorMessage, httpError } from '../errors.ts';

export type HttpReply = { status: number; body: string; contentType?: string };

const json = (status: number, body: unknown): HttpReply => ({ status, body: JSON.stringify(body) });

/**
 * Why the hub is not ready, as a class only: the public `/ready` never carries error text
 * (it can name databases and hosts); `/admin/health` has the details.
 */
export type NotReadyReason = 'shutting_down' | 'database';
export type Readiness = { ok: true } | { ok: false; reason: NotReadyReason };

export type HealthSource = {
  ready(): Readiness;
  admin(): Promise<Record<string, unknown>>;
};

/** Reads failing for this long, this many times in a row, make the hub not ready. */
export const READER_FAILING_MS = 2000;
export const READER_FAILING_READS = 3;

/**
 * Ready while the hub can deliver: the listener is connected and the outbox reader reads.
 * One failed read (a terminated backend, a restart of the pool's connection) does not flip
 * it; reads failing for READER_FAILING_MS, at least READER_FAILING_READS times, do.
 */
export function readiness(i: {
  shuttingDown: boolean;
  listenerConnected: boolean;
  /** The reader has a position (it read the outbox at least once). */
  started: boolean;
  readerFailure: { since: number; count: number } | undefined;
  now: number;
}): Readiness {
  if (i.shuttingDown) return { ok: false, reason: 'shutting_down' };
  if (!i.listenerConnected || !i.started) return { ok: false, reason: 'database' };
  const f = i.readerFailure;
  if (f && f.count >= READER_FAILING_READS && i.now - f.since >= READER_FAILING_MS)
    return { ok: false, reason: 'database' };
  return { ok: true };
}

/** Extracts a Bearer token from an Authorization header value. */
export function bearer(header: string): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** The HTTP routes as plain functions of their inputs; hub/http.ts wires them to uWS. */
export function createRoutes(deps: {
  auth: Authenticator;
  /** Snapshots for GET /dashboard/{id} (JSON, null: no such election). */
  cache: Pick<DashboardCache, 'get'>;
  metrics: Metrics;
  health: HealthSource;
  electionOf: ElectionOf;
  log: Logger;
}) {
  const { auth, metrics } = deps;

  const authorize = async (token: string | undefined) => {
    const r = await auth.verify(token);
    if (!r.ok) metrics.authFailures.inc({ reason: r.reason });
    return r;
  };

  return {
    health: (): HttpReply => json(200, { status: 'ok' }),

    ready: (): HttpReply => {
      const r = deps.health.ready();
      return r.ok ? json(200, { status: 'ready' }) : json(503, { status: 'unavailable', reason: r.reason });
    },

    async adminHealth(token: string | undefined): Promise<HttpReply> {
      const r = await authorize(token);
      if (!r.ok) return httpError(ErrorCode.unauthorized, r.reason);
      if (!isAdmin(r.claims)) return httpError(ErrorCode.forbidden, 'admin role required');
      return json(200, await deps.health.admin());
    },

    async dashboard(idText: string, token: string | undefined): Promise<HttpReply> {
      const r = await authorize(token);
      if (!r.ok) return httpError(ErrorCode.unauthorized, r.reason);
      // One spelling, as for topics: /dashboard/007 names no election.
      const id = parseId(idText);
      if (id === undefined) return httpError(ErrorCode.notFound, 'no such election');
      if (!mayUse(r.claims, { kind: 'election', id }, deps.electionOf))
        return httpError(ErrorCode.forbidden, `token may not read election:${id}`);
      try {
        const snapshot = await deps.cache.get(id);
        if (snapshot === null) return httpError(ErrorCode.notFound, 'no such election');
        return { status: 200, body: snapshot };
      } catch (err) {
        deps.log.error({ err: errorMessage(err), electionId: id }, 'dashboard snapshot failed');
        return httpError(ErrorCode.unavailable, 'snapshot could not be computed');
      }
    },
  };
}

export type Routes = ReturnType<typeof createRoutes>;
