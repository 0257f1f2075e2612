// The dashboards and alerts query names the hub really exports: start a hub, make it do a bit of
// everything, scrape /metrics and look every name up. With promtool on PATH, the scrape must also
// pass `promtool check metrics` (scripts/promtool-check.sh installs promtool).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { connect, startTestHub, token, waitUntil } from './support/hub.ts';
import { metricNamesUsedByOps, namesInExposition, PROMETHEUS_SYNTHETIC_METRICS } from './support/metric-names.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('metrics used by dashboards and alerts', () => {
  let db: TestDatabase | undefined;
  let hub: Hub | undefined;
  let scrape = '';

  beforeAll(async () => {
    db = await createTestDatabase('ops_metrics');
    hub = await startTestHub(db.url);
    const base = hub.url;
    await waitUntil(async () => (await fetch(`${base}/ready`)).ok, 10_000, '/ready');

    // Traffic touching every labelled metric the dashboards chart: prom-client prints no sample
    // for a label set nobody has used yet.
    const { elections, committees } = await seed(db.pool, 1, 1);
    const election = elections[0];
    const committee = committees.get(election ?? -1)?.[0];
    const admin = await token({ sub: 'ops-admin', role: 'admin' });

    const client = await connect(hub, { token: admin });
    await client.next((f) => f.type === 'connection_success');
    client.send({ type: 'ping' });
    await client.next((f) => f.type === 'pong');
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [election, committee]);
    await client.next((f) => f.type === 'guarantee_update');

    const auth = { authorization: `Bearer ${admin}` };
    for (let i = 0; i < 2; i++) expect((await fetch(`${base}/dashboard/${election}`, { headers: auth })).status).toBe(200);
    const refused = await connect(hub, { token: 'not-a-jwt' }).then(
      async (c) => (await c.close(), 101),
      (err: { status?: number }) => err.status,
    );
    expect(refused).toBe(401);
    expect((await fetch(`${base}/admin/health`, { headers: { authorization: 'Bearer nope' } })).status).toBe(401);

    await client.close();
    const metrics = async () => (await fetch(`${base}/metrics`)).text();
    await waitUntil(async () => /^hub_connections_closed_total\{/m.test(await metrics()), 10_000, 'the close to be counted');
    scrape = await metrics();
  });

  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it.each(metricNamesUsedByOps(root).map((u) => [u.file, u.names] as const))('%s queries only exported names', (_file, names) => {
    const exported = namesInExposition(scrape);
    expect(names.filter((n) => !exported.has(n) && !PROMETHEUS_SYNTHETIC_METRICS.has(n))).toEqual([]);
  });

  it('has samples for the labelled series the dashboards group by', () => {
    for (const series of [
      'hub_connections_by_role{role="admin"}',
      'hub_connections_closed_total{code=',
      'hub_messages_sent_total{type=',
      'hub_event_delivery_lag_seconds_bucket{',
      'hub_auth_failures_total{reason=',
      'hub_dashboard_cache_requests_total{result="hit"}',
      'hub_dashboard_cache_requests_total{result="miss"}',
    ]) {
      expect(scrape, series).toContain(`\n${series}`);
    }
    expect(scrape).toMatch(/^hub_events_total\{(?=.*kind=)(?=.*action=)/m);
  });

  // .ci/run installs promtool (Debian `prometheus`); in CI its absence is a failure, not a skip.
  const promtool = spawnSync('promtool', ['--version']).status === 0;
  it.skipIf(!promtool && !process.env.CI)('passes `promtool check metrics`', () => {
    expect(promtool, 'promtool is not installed').toBe(true);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: scrape, encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });

  it.skipIf(!promtool && !process.env.CI)('promtool accepts the Prometheus config, the alert rules and their unit tests', () => {
    expect(promtool, 'promtool is not installed').toBe(true);
    const r = spawnSync('bash', ['scripts/promtool-check.sh'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });
});
