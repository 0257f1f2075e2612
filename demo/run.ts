/*
 * demo/: `npm run demo`: embedded PostgreSQL (embedded-postgres.ts), the reference schema and demo
 * elections, a simulator writing changes (simulator.ts), and a hub serving the dashboard page.
 * Outside src/: not in the build (dist/) nor the container image; the CLI imports it by URL.
 *
 * Lifecycle: started in that order; SIGINT/SIGTERM (also during start-up) stops everything in
 * reverse order; a second signal forces the exit. The tests reuse embedded-postgres.ts and the
 * simulator.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type Env, formatConfigErrors, parseConfig } from '../src/config/index.ts';
import { migrate } from '../src/db/migrate.ts';
import { signToken } from '../src/auth/jwt.ts';
import { createLogger } from '../src/log.ts';
import { errorMessage } from '../src/errors.ts';
import { createReleasers } from '../src/lifecycle/releasers.ts';
import { type StaticFile, type StaticFiles, buildWeb, staticFile, staticFilesFrom } from '../src/http/static.ts';
import { startEmbeddedPostgres } from './embedded-postgres.ts';
import { seedDemo, startSimulator } from './simulator.ts';
import type { DemoModule } from '../src/cli.ts';

const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));
const DATABASE = 'election_hub_demo';
const ADMIN_TOKEN_TTL = '24h';

export type DemoElection = { id: number; name: string; committees: Array<{ id: number; name: string }> };

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * `npm run demo`: embedded PostgreSQL (data kept under `.data/`, or `DEMO_DATA_DIR`), the
 * reference schema, demo elections, the simulator and a hub with the in-process cache serving
 * the dashboard page. Prints the page's URL and an admin token, then runs until SIGINT/SIGTERM,
 * when it stops everything in reverse order and resolves 0 (1 when start-up failed, 2 for a bad
 * configuration). `DATABASE_URL`, `REDIS_URL` and asymmetric key settings from the environment
 * are ignored: the demo brings its own database and signs its own tokens.
 */
export async function runDemo(env: Env): Promise<number> {
  const secret = env.JWT_SECRET || randomBytes(32).toString('base64url');
  const checked = parseConfig({
    ...env,
    DATABASE_URL: undefined, // the embedded server's, once it runs
    REDIS_URL: undefined,
    JWT_PUBLIC_KEY: undefined,
    JWKS_URL: undefined,
    JWT_SECRET: secret,
    // A demo with a printed admin token listens on loopback unless told otherwise.
    HOST: env.HOST || '127.0.0.1',
    LOG_LEVEL: env.LOG_LEVEL || 'warn',
  });
  if (!checked.ok) {
    console.error(formatConfigErrors(checked.errors));
    return 2;
  }
  const say = (line = '') => process.stdout.write(`${line}\n`);
  const note = (line: string) => process.stdout.write(`  ${line}\n`);
  const quiet = (env.DEMO_VERBOSE ?? '') === '';

  // Signals: the first stops everything (also during start-up), a second forces the exit.
  let signalled: NodeJS.Signals | undefined;
  let onSignal: (sig: NodeJS.Signals) => void = () => undefined;
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    onSignal = (sig) => {
      if (signalled) {
        process.stderr.write(`\n${sig} again: exiting now (PostgreSQL is told to shut down)\n`);
        process.exit(130);
      }
      signalled = sig;
      resolve(sig);
    };
  });
  for (const sig of SIGNALS) process.on(sig, onSignal);

  // Stopped last first, each step within SHUTDOWN_TIMEOUT; each outcome is printed as it happens.
  const releasers = createReleasers({
    timeoutMs: checked.config.SHUTDOWN_TIMEOUT,
    onStep: (name, err) => (err ? void process.stderr.write(`demo: ${err.message}\n`) : note(`stopped ${name}`)),
  });
  /** True when every step stopped cleanly. */
  const stopAll = (): Promise<boolean> =>
    releasers.release().then(
      () => true,
      () => false,
    );
  // A stop that hangs must not keep the terminal: after the timeout the process exits anyway.
  const shutdown = async (): Promise<number> => {
    say(`\n${signalled ?? 'stop'}: shutting down`);
    const timer = setTimeout(() => {
      process.stderr.write(`demo: shutdown took longer than ${checked.config.SHUTDOWN_TIMEOUT} ms; exiting\n`);
      process.exit(1);
    }, checked.config.SHUTDOWN_TIMEOUT + 20_000);
    timer.unref();
    try {
      return (await stopAll()) ? 0 : 1;
    } finally {
      clearTimeout(timer);
    }
  };

  try {
    say('election-hub demo');

    // 1. The page (built now if web/dist is missing or older than its sources).
    const web = buildWeb();
    note(web.built ? `dashboard page built (${web.reason})` : `dashboard page: ${web.reason}`);

    // 2. PostgreSQL, kept between runs.
    const dataDir = path.resolve(env.DEMO_DATA_DIR || path.join(REPO_ROOT, '.data'));
    await prepareParent(dataDir);
    const clusterDir = path.join(dataDir, 'postgres');
    note(`starting PostgreSQL (data in ${clusterDir})…`);
    const server = await startEmbeddedPostgres({
      dataDir: clusterDir,
      log: quiet ? undefined : (m) => note(`postgres: ${m}`),
    });
    const disarm = stopOrphanOnExit(clusterDir);
    releasers.push('PostgreSQL', async () => {
      await server.stop();
      disarm();
    });
    if (signalled) return await shutdown();

    const databaseUrl = await ensureDatabase(server.url, DATABASE);
    const migrated = await migrate(databaseUrl, { referenceSchema: true });
    note(migrated.applied.length ? `schema: applied ${migrated.applied.join(', ')}` : 'schema: up to date');

    // 3. Elections and the simulator writing to them.
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 });
    pool.on('error', (err) => {
      // Ctrl-C in a terminal reaches PostgreSQL too; its connections then end on their own.
      if (!signalled) process.stderr.write(`demo: idle database connection failed: ${err.message}\n`);
    });
    releasers.push('simulator pool', () => pool.end());
    const electionIds = await seedDemo(pool);
    const elections = await describeElections(pool, electionIds);
    const rate = Number(env.DEMO_RATE ?? '') || 5;
    const simulator = startSimulator({ pool, electionIds, ratePerSecond: rate, log: quiet ? undefined : note });
    releasers.push('simulator', () => simulator.stop());
    if (signalled) return await shutdown();

    // 4. The hub, serving the page with the demo's election names built in.
    const config = Object.freeze({ ...checked.config, DATABASE_URL: databaseUrl });
    const { startHub } = await import('../src/main.ts');
    const log = createLogger(config.LOG_LEVEL);
    const hub = await startHub(config, {
      log,
      staticFiles: withDirectory(staticFilesFrom(undefined, { build: false }), elections),
    }).catch((err: unknown) => {
      const msg = errorMessage(err);
      const busy = /cannot listen .* for metrics/.test(msg)
        ? ` (is port ${config.METRICS_PORT} taken? set METRICS_PORT=...)`
        : /cannot listen/.test(msg)
          ? ` (is port ${config.PORT} taken? set PORT=...)`
          : '';
      throw new Error(`the hub did not start${busy}: ${errorMessage(err)}`, { cause: err });
    });
    releasers.push('hub', () => hub.stop());

    const token = await signToken(secret, {
      sub: 'demo-admin',
      role: 'admin',
      ttl: ADMIN_TOKEN_TTL,
      ...(config.JWT_ISSUER ? { issuer: config.JWT_ISSUER } : {}),
      ...(config.JWT_AUDIENCE ? { audience: config.JWT_AUDIENCE } : {}),
    });
    const base = `http://${config.HOST === '0.0.0.0' ? '127.0.0.1' : config.HOST}:${hub.port}`;

    say();
    say('elections:');
    for (const e of elections) say(`  election ${e.id}: ${e.name} (${e.committees.length} committees)`);
    say(`simulator: about ${rate} writes/s in bursts, now and then a bulk insert`);
    say(
      `hub: ${base} (in-process cache; ${env.JWT_SECRET ? 'JWT_SECRET from the environment' : 'JWT_SECRET generated for this run'})`,
    );
    say();
    say(`dashboard: ${base}/#token=${token}`);
    say(`admin token: ${token}`);
    say(`snapshot: curl -H "Authorization: Bearer <admin token>" ${base}/dashboard/${elections[0]?.id ?? 1}`);
    say(`metrics: ${hub.metricsUrl}/metrics (Prometheus; METRICS_PORT to change)`);
    say();
    say('Ctrl-C stops the demo; the data stays for the next run.');

    await signal;
    return await shutdown();
  } catch (err) {
    const cause = (err as { cause?: unknown }).cause;
    const why =
      cause === undefined || errorMessage(err).includes(errorMessage(cause)) ? '' : `\n  cause: ${errorMessage(cause)}`;
    process.stderr.write(`demo: ${errorMessage(err)}${why}\n`);
    await stopAll();
    return 1;
  } finally {
    for (const sig of SIGNALS) process.off(sig, onSignal);
  }
}

/**
 * If the process ends without the orderly stop (an uncaught exception, a forced second Ctrl-C),
 * PostgreSQL would outlive it and keep the data directory locked for the next run (the library's
 * own exit hook is removed by embedded-postgres.ts): on `exit` (synchronous only) it is asked
 * for a fast shutdown. Returns the function that disarms this.
 */
function stopOrphanOnExit(clusterDir: string): () => void {
  const handler = () => {
    try {
      const pid = Number.parseInt(
        readFileSync(path.join(clusterDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '',
        10,
      );
      if (pid > 0) process.kill(pid, 'SIGINT');
    } catch {
      // No pid file or no such process: PostgreSQL is not running, which is the goal.
    }
  };
  process.on('exit', handler);
  return () => process.off('exit', handler);
}

async function prepareParent(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  if (os.userInfo().uid !== 0) return;
  const st = await fs.stat(dir);
  if ((st.mode & 0o001) === 0) await fs.chmod(dir, (st.mode & 0o7777) | 0o011);
}

/** Creates the demo database on first use; returns its URL. */
async function ensureDatabase(serverUrl: string, name: string): Promise<string> {
  const client = new pg.Client({ connectionString: serverUrl });
  client.on('error', () => undefined); // a failed query below says what went wrong
  await client.connect();
  try {
    const exists = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (exists.rowCount === 0) {
      await client.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`).catch((err: unknown) => {
        // Two demos starting on one data directory: the other one created it first.
        if ((err as { code?: string }).code !== '42P04') throw err;
      });
    }
  } finally {
    await client.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** The demo elections with their committees, in id order (printed, and given to the page). */
export async function describeElections(pool: pg.Pool, ids: number[]): Promise<DemoElection[]> {
  const rows = await pool.query<{
    id: string;
    name: string;
    committee_id: string | null;
    committee_name: string | null;
  }>(
    `SELECT e.id, e.name, c.id AS committee_id, c.name AS committee_name
       FROM elections e LEFT JOIN committees c ON c.election_id = e.id
      WHERE e.id = ANY($1::bigint[])
      ORDER BY e.id, c.id`,
    [ids],
  );
  const byId = new Map<number, DemoElection>();
  for (const r of rows.rows) {
    const id = Number(r.id);
    let e = byId.get(id);
    if (!e) byId.set(id, (e = { id, name: r.name, committees: [] }));
    if (r.committee_id !== null)
      e.committees.push({ id: Number(r.committee_id), name: r.committee_name ?? `Committee ${r.committee_id}` });
  }
  return [...byId.values()];
}

/**
 * The page learns election and committee names from a JSON block in index.html; a real
 * deployment has no such block and the page shows ids. `<` is escaped so no name can end the script.
 * The changed page gets its own hash (ETag) and compressed copies, made once.
 */
export function withDirectory(files: StaticFiles, elections: DemoElection[]): StaticFiles {
  const json = JSON.stringify({ elections }).replace(/</g, '\\u003c');
  const block = `<script id="hub-directory" type="application/json">${json}</script>\n  </head>`;
  let page: StaticFile | undefined;
  return (urlPath) => {
    if (urlPath !== '/') return files(urlPath);
    if (page) return page;
    const f = files('/');
    if (!f) return undefined;
    page = staticFile(Buffer.from(f.identity.toString('utf8').replace('</head>', block)), f.contentType);
    return page;
  };
}

// src/cli.ts imports this module by URL (src/ must not depend on demo/): this keeps the two in step.
runDemo satisfies DemoModule['runDemo'];
