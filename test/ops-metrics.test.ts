// The dashboards and alerts query names the hub really exports: start a hub, make it do a bit of
// everything, scrape /metrics (on its own listener, METRICS_PORT) and look every name up. With
// promtool on PATH, the scrape must also pass `promtool check metrics` (scripts/promtool-check.sh
// installs promtool). Then CONTRACT section 7: known label values exist at 0 on a fresh hub, label
// values never come from tokens, client frames or rows, and /metrics is not on the public port.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Hub } from '../src/main.ts';
import { LABEL_VALUES, OTHER } from '../src/metrics/index.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { connect, startTestHub, token, waitUntil, type TestClient } from './support/hub.ts';
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
    for (let i = 0; i < 2; i++)
      expect((await fetch(`${base}/dashboard/${election}`, { headers: auth })).status).toBe(200);
    const refused = await connect(hub, { token: 'not-a-jwt' }).then(
      async (c) => (await c.close(), 101),
      (err: { status?: number }) => err.status,
    );
    expect(refused).toBe(401);
    expect((await fetch(`${base}/admin/health`, { headers: { authorization: 'Bearer nope' } })).status).toBe(401);

    await client.close();
    const metrics = async () => (await fetch(`${hub?.metricsUrl}/metrics`)).text();
    await waitUntil(
      async () => /^hub_connections_closed_total\{code="[^"]+"\} [1-9]/m.test(await metrics()),
      10_000,
      'the close to be counted',
    );
    scrape = await metrics();
  });

  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it.each(metricNamesUsedByOps(root).map((u) => [u.file, u.names] as const))(
    '%s queries only exported names',
    (_file, names) => {
      const exported = namesInExposition(scrape);
      expect(names.filter((n) => !exported.has(n) && !PROMETHEUS_SYNTHETIC_METRICS.has(n))).toEqual([]);
    },
  );

  it('has samples for the labelled series the dashboards group by', () => {
    for (const series of [
      'hub_connections_by_role{role="admin"}',
      'hub_connections_closed_total{code=',
      'hub_messages_sent_total{type=',
      'hub_bytes_sent_total{type="guarantee_update"}',
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

  it.skipIf(!promtool && !process.env.CI)(
    'promtool accepts the Prometheus config, the alert rules and their unit tests',
    () => {
      expect(promtool, 'promtool is not installed').toBe(true);
      const r = spawnSync('bash', ['scripts/promtool-check.sh'], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/SUCCESS/);
    },
  );
});

/** `name{label="value"} number` lines of a scrape, as a map from the series to its value. */
const samples = (text: string): Map<string, number> => {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_:][a-z0-9_:]*(?:\{[^}]*\})?) (\S+)$/i.exec(line);
    if (m?.[1] && m[2]) out.set(m[1], Number(m[2]));
  }
  return out;
};

describe('metrics listener and label values (CONTRACT section 7)', () => {
  let db: TestDatabase | undefined;
  let hub: Hub | undefined;
  let e1 = 0;
  let c1 = 0;
  const scrape = async () => samples(await (await fetch(`${hub?.metricsUrl}/metrics`)).text());
  // Every socket a test opens is closed after it, also when it failed half-way.
  const open: TestClient[] = [];
  const client = async (t: string) => {
    const c = await connect(hub as Hub, { token: t });
    open.push(c);
    return c;
  };
  afterEach(async () => {
    for (const c of open.splice(0)) await c.close();
  });

  beforeAll(async () => {
    db = await createTestDatabase('ops_labels');
    const s = await seed(db.pool, 1, 1);
    e1 = s.elections[0] as number;
    c1 = s.committees.get(e1)?.[0] as number;
    hub = await startTestHub(db.url);
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('serves /metrics on its own port; the public port answers 404', async () => {
    expect(hub?.metricsPort).toBeGreaterThan(0);
    expect(hub?.metricsPort).not.toBe(hub?.port);
    const own = await fetch(`${hub?.metricsUrl}/metrics`);
    expect(own.status).toBe(200);
    expect(own.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await own.text()).toMatch(/^hub_connections 0$/m);
    const pub = await fetch(`${hub?.url}/metrics`);
    expect(pub.status).toBe(404);
    expect(await pub.text()).not.toMatch(/hub_connections/);
    expect((await fetch(`${hub?.metricsUrl}/`)).status).toBe(404);
  });

  it('has a series at 0 for every known label value on a fresh hub', async () => {
    // The hub above has had no traffic yet (this test runs before the next one).
    const series = await scrape();
    const expected: string[] = [
      ...LABEL_VALUES.role.map((v) => `hub_connections_by_role{role="${v}"}`),
      ...LABEL_VALUES.code.map((v) => `hub_connections_closed_total{code="${v}"}`),
      ...LABEL_VALUES.type.flatMap((v) => [
        `hub_messages_sent_total{type="${v}"}`,
        `hub_bytes_sent_total{type="${v}"}`,
      ]),
      ...LABEL_VALUES.reason.map((v) => `hub_auth_failures_total{reason="${v}"}`),
      ...LABEL_VALUES.errorCode.map((v) => `hub_client_errors_total{code="${v}"}`),
      ...LABEL_VALUES.computation.map((v) => `hub_dashboard_computations_total{reason="${v}"}`),
      ...['guarantee', 'attendance', 'vote'].flatMap((kind) =>
        ['created', 'updated', 'deleted', 'truncated'].map(
          (action) => `hub_events_total{kind="${kind}",action="${action}"}`,
        ),
      ),
      'hub_events_total{kind="app",action="published"}',
      // Named by the contract, whatever the lists above say.
      'hub_dashboard_cache_requests_total{result="hit"}',
      'hub_dashboard_cache_requests_total{result="miss"}',
      'hub_dashboard_computations_total{reason="first_use"}',
      'hub_dashboard_drift_total',
      'hub_reader_restarts_total',
      'hub_connections_by_role{role="admin"}',
      'hub_auth_failures_total{reason="expired"}',
      'hub_messages_sent_total{type="dashboard_update"}',
      'hub_bytes_sent_total{type="voting_update"}',
      'hub_connections_closed_total{code="4008"}',
      ...LABEL_VALUES.slowCloseCause.map((v) => `hub_slow_reader_closes_total{cause="${v}"}`),
    ];
    expect(expected.filter((s) => series.get(s) !== 0)).toEqual([]);
  });

  it('bounds label values that come from tokens, clients and rows', async () => {
    const odd = await client(await token({ sub: 'odd', role: 'role-from-a-token-1234', elections: [e1] }));
    await odd.next((f) => f.type === 'connection_success');
    await waitUntil(
      async () => (await scrape()).get(`hub_connections_by_role{role="${OTHER}"}`) === 1,
      5000,
      'role other = 1',
    );
    odd.ws.close(4321, "a code of the client's choosing");
    await odd.closed;
    await waitUntil(
      async () => (await scrape()).get(`hub_connections_closed_total{code="${OTHER}"}`) === 1,
      5000,
      'close code other',
    );

    const admin = await client(await token({ sub: 'ops', role: 'admin' }));
    await admin.next((f) => f.type === 'connection_success');
    await db?.pool.query(`SELECT hub.publish($1, 'my.own-event', '{"x":1}')`, [`election:${e1}`]);
    await admin.next((f) => f.type === 'my.own-event');
    await waitUntil(
      async () => (await scrape()).get('hub_messages_sent_total{type="app_event"}') === 1,
      5000,
      'app_event counted',
    );
    await admin.close();

    const text = await (await fetch(`${hub?.metricsUrl}/metrics`)).text();
    expect(text).not.toContain('role-from-a-token');
    expect(text).not.toContain('4321');
    expect(text).not.toContain('my.own-event');
    expect(samples(text).get(`hub_connections_by_role{role="${OTHER}"}`)).toBe(0);
  });

  it('counts bytes sent by frame type: frame size times receivers', async () => {
    const admin = await token({ sub: 'bytes', role: 'admin' });
    const clients = [await client(admin), await client(admin)];
    const sizes: number[][] = clients.map(() => []);
    clients.forEach((c, i) =>
      c.ws.on('message', (data: Buffer) => {
        if (data.toString().startsWith('{"type":"guarantee_update"')) sizes[i]?.push(data.length);
      }),
    );
    for (const c of clients) await c.next((f) => f.type === 'connection_success');
    const before = await scrape();
    await db?.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'ünïcode bytes')`,
      [e1, c1],
    );
    for (const c of clients) await c.next((f) => f.type === 'guarantee_update');
    const size = sizes[0]?.[0] ?? 0;
    expect(size).toBeGreaterThan(100);
    expect(sizes).toEqual([[size], [size]]);
    const key = 'hub_bytes_sent_total{type="guarantee_update"}';
    await waitUntil(async () => (await scrape()).get(key) === (before.get(key) ?? 0) + 2 * size, 5000, 'bytes counted');
    const after = await scrape();
    const msgs = 'hub_messages_sent_total{type="guarantee_update"}';
    expect((after.get(msgs) ?? 0) - (before.get(msgs) ?? 0)).toBe(2);
  });
});
