import { describe, expect, it } from 'vitest';
import type { AuthResult } from '../auth/jwt.ts';
import type { DashboardCache } from '../cache/dashboard.ts';
import { ERRORS, type ErrorCode } from '../errors.ts';
import type { Claims, Id } from '../events/topics.ts';
import { createLogger } from '../log.ts';
import { createMetrics } from '../metrics/index.ts';
import { type HttpReply, createRoutes } from './routes.ts';

// The HTTP routes as functions, with a fake authenticator and cache: every error reply is an
// HTTP error body of the one table (src/errors.ts) with the table's status.

const claims = (c: Partial<Claims>): Claims => ({
  sub: 'ana',
  role: undefined,
  elections: [],
  committees: [],
  exp: undefined,
  ...c,
});
const TOKENS: Record<string, AuthResult> = {
  admin: { ok: true, claims: claims({ role: 'admin' }) },
  viewer: { ok: true, claims: claims({ elections: ['1'] }) },
  stale: { ok: false, reason: 'expired' },
};

function routes(cache: Partial<DashboardCache> = {}) {
  const metrics = createMetrics();
  const r = createRoutes({
    auth: {
      verify: async (t) =>
        t === undefined ? { ok: false, reason: 'missing' } : (TOKENS[t] ?? { ok: false, reason: 'malformed' }),
    },
    cache: {
      get: async (id: Id) => (id === '1' || id === '2' ? `{"election_id":${id}}` : null),
      ...cache,
    } as DashboardCache,
    metrics,
    health: { ready: () => ({ ok: false, reason: 'database' }), admin: async () => ({ status: 'ok' }) },
    electionOf: () => undefined,
    log: createLogger('silent'),
  });
  return { r, metrics };
}

/** An error reply's code, checked against the table. */
const errorOf = (reply: HttpReply): { error: ErrorCode; reason?: string } => {
  const body = JSON.parse(reply.body) as { error: ErrorCode; reason?: string };
  expect(Object.keys(ERRORS)).toContain(body.error);
  expect(reply.status, body.error).toBe((ERRORS[body.error] as { status?: number }).status);
  return body;
};

describe('HTTP routes: error bodies', () => {
  it('/admin/health: 401 with the token failure as reason, 403 for a non-admin, 200 for an admin', async () => {
    const { r, metrics } = routes();
    expect(errorOf(await r.adminHealth(undefined))).toEqual({ error: 'unauthorized', reason: 'missing' });
    expect(errorOf(await r.adminHealth('stale'))).toEqual({ error: 'unauthorized', reason: 'expired' });
    expect(errorOf(await r.adminHealth('viewer'))).toEqual({ error: 'forbidden', reason: 'admin role required' });
    expect(await r.adminHealth('admin')).toEqual({ status: 200, body: '{"status":"ok"}' });
    const failures = (await metrics.registry.getSingleMetric('hub_auth_failures_total')?.get())?.values ?? [];
    expect(failures.filter((v) => v.value > 0).map((v) => [v.labels.reason, v.value])).toEqual([
      ['missing', 1],
      ['expired', 1],
    ]);
  });

  it('/dashboard/{id}: 401, 404 for another spelling or an unknown election, 403 for another election, 503 when it cannot be computed', async () => {
    const { r } = routes();
    expect(errorOf(await r.dashboard('1', 'nonsense'))).toEqual({ error: 'unauthorized', reason: 'malformed' });
    expect(errorOf(await r.dashboard('01', 'viewer'))).toEqual({ error: 'not_found', reason: 'no such election' });
    expect(errorOf(await r.dashboard('2', 'viewer'))).toEqual({
      error: 'forbidden',
      reason: 'token may not read election:2',
    });
    expect(errorOf(await r.dashboard('9', 'admin'))).toEqual({ error: 'not_found', reason: 'no such election' });
    expect(await r.dashboard('1', 'viewer')).toEqual({ status: 200, body: '{"election_id":1}' });
    const failing = routes({ get: () => Promise.reject(new Error('connection refused to db.internal:5432')) }).r;
    const reply = await failing.dashboard('1', 'viewer');
    expect(errorOf(reply)).toEqual({ error: 'unavailable', reason: 'snapshot could not be computed' });
    expect(reply.body).not.toContain('db.internal'); // no error text from inside
  });

  it('/ready says only the reason class; /health is always ok', () => {
    const { r } = routes();
    expect(r.ready()).toEqual({ status: 503, body: '{"status":"unavailable","reason":"database"}' });
    expect(r.health()).toEqual({ status: 200, body: '{"status":"ok"}' });
  });
});
