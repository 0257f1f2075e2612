import type { Authenticator } from '../auth/jwt.ts';
import type { DashboardCache } from '../cache/dashboard.ts';
import type { Metrics } from '../metrics/index.ts';
import type { Logger } from '../log.ts';
import { type ElectionOf, isAdmin, mayUse, parseId } from '../events/topics.ts';
import { errorMessage } from '../errors.ts';

export type HttpReply = { status: number; body: string; contentType?: string };

const json = (status: number, body: unknown): HttpReply => ({ status, body: JSON.stringify(body) });

export type HealthSource = {
  ready(): { ok: true } | { ok: false; reason: string };
  admin(): Promise<Record<string, unknown>>;
};

/** Extracts a Bearer token from an Authorization header value. */
export function bearer(header: string): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** The HTTP routes as plain functions of their inputs; hub/server.ts wires them to uWS. */
export function createRoutes(deps: {
  auth: Authenticator;
  cache: DashboardCache;
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
      if (!r.ok) return json(401, { error: 'unauthorized', reason: r.reason });
      if (!isAdmin(r.claims)) return json(403, { error: 'forbidden', reason: 'admin role required' });
      return json(200, await deps.health.admin());
    },

    async dashboard(idText: string, token: string | undefined): Promise<HttpReply> {
      const r = await authorize(token);
      if (!r.ok) return json(401, { error: 'unauthorized', reason: r.reason });
      // One spelling, as for topics: /dashboard/007 names no election.
      const id = parseId(idText);
      if (id === undefined) return json(404, { error: 'not_found', reason: 'no such election' });
      if (!mayUse(r.claims, { kind: 'election', id }, deps.electionOf)) return json(403, { error: 'forbidden', reason: `token may not read election:${id}` });
      try {
        const snapshot = await deps.cache.get(id);
        if (snapshot === null) return json(404, { error: 'not_found', reason: 'no such election' });
        return { status: 200, body: snapshot };
      } catch (err) {
        deps.log.error({ err: errorMessage(err), electionId: id }, 'dashboard snapshot failed');
        return json(503, { error: 'unavailable', reason: 'snapshot could not be computed' });
      }
    },
  };
}

export type Routes = ReturnType<typeof createRoutes>;
