import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { errorMessage } from '../../src/errors.ts';
import { redactUrl } from '../../src/log.ts';
import { findFreePort, startEmbeddedPostgres } from '../../demo/embedded-postgres.ts';
import { type Releasers, createReleasers } from '../../src/lifecycle/releasers.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A PostgreSQL superuser URL; test files create their own database in it. */
    databaseUrl: string;
    redisUrl: string;
  }
}

const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
const PROBE_TIMEOUT_MS = 2000;
const REDIS_START_TIMEOUT_MS = 10_000;
/** How long each teardown step (stopping PostgreSQL or Redis, removing a directory) may take. */
const STOP_TIMEOUT_MS = 30_000;

type Teardown = () => Promise<void>;

/**
 * vitest globalSetup: uses the PostgreSQL and Redis named by DATABASE_URL / REDIS_URL when they
 * answer, otherwise starts an embedded PostgreSQL and/or a `redis-server` on free ports, and
 * provides the URLs to test files (`inject('databaseUrl')`, `inject('redisUrl')`).
 * The returned teardown stops only what this setup started.
 */
export default async function setup(project: TestProject): Promise<Teardown> {
  // Last started, first stopped; one failure does not leak the other service (all failures are thrown together).
  const releasers = createReleasers({ timeoutMs: STOP_TIMEOUT_MS });
  const teardown: Teardown = () => releasers.release();
  try {
    project.provide('databaseUrl', await resolvePostgres(releasers));
    project.provide('redisUrl', await resolveRedis(releasers));
  } catch (err) {
    await teardown();
    throw err;
  }
  return teardown;
}

async function resolvePostgres(releasers: Releasers): Promise<string> {
  const configured = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const problem = await probePostgres(configured);
  if (problem === undefined) return configured;

  note(`no PostgreSQL at ${redactUrl(configured)} (${problem}); starting an embedded one`);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'election-hub-test-pg-'));
  // Under root the server runs as the `postgres` account, which must be able to enter the temp dir.
  await fs.chmod(dir, 0o755);
  releasers.push('embedded PostgreSQL directory', () => fs.rm(dir, { recursive: true, force: true }));
  const server = await startEmbeddedPostgres({ dataDir: path.join(dir, 'data') });
  releasers.push('embedded PostgreSQL', () => server.stop());
  return server.url;
}

async function resolveRedis(releasers: Releasers): Promise<string> {
  const configured = process.env.REDIS_URL || DEFAULT_REDIS_URL;
  const problem = await probeRedis(configured);
  if (problem === undefined) return configured;

  const binary = await findOnPath('redis-server');
  if (!binary) {
    throw new Error(
      `no Redis at ${redactUrl(configured)} (${problem}) and no redis-server on PATH: install redis (apt-get install redis-server, brew install redis) or run \`docker compose up -d redis\``,
    );
  }
  note(`no Redis at ${redactUrl(configured)} (${problem}); starting ${binary}`);
  const port = await findFreePort();
  const child = spawn(binary, ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = collectOutput(child);
  releasers.push('redis-server', () => stopChild(child));
  const url = `redis://127.0.0.1:${port}`;
  await waitForRedis(url, child, output);
  return url;
}

/** undefined when PostgreSQL answers `select 1`, else why not. */
async function probePostgres(url: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: PROBE_TIMEOUT_MS });
  // A server dying mid-probe emits 'error' on the client; the failed query already reports it.
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');
    return undefined;
  } catch (err) {
    return errorMessage(err) || 'no answer';
  } finally {
    await client.end().catch((err: unknown) => note(`closing the PostgreSQL probe: ${errorMessage(err)}`));
  }
}

/** undefined when Redis answers PING, else why not. */
async function probeRedis(url: string): Promise<string | undefined> {
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: PROBE_TIMEOUT_MS,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null, // one attempt: this is a probe
    enableOfflineQueue: false,
  });
  // connect() then only rejects with "Connection is closed."; the socket error says why.
  let socketError: unknown;
  redis.on('error', (err: unknown) => {
    socketError ??= err;
  });
  try {
    await redis.connect();
    const pong = await redis.ping();
    return pong === 'PONG' ? undefined : `PING answered ${pong}`;
  } catch (err) {
    return errorMessage(socketError ?? err) || 'no answer';
  } finally {
    redis.disconnect();
  }
}

async function waitForRedis(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + REDIS_START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server exited (${child.exitCode ?? child.signalCode}): ${output()}`);
    }
    const problem = await probeRedis(url);
    if (problem === undefined) return;
    if (Date.now() > deadline)
      throw new Error(
        `redis-server did not answer at ${url} within ${REDIS_START_TIMEOUT_MS} ms: ${problem}; ${output()}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}

/** The last lines a child printed, for error messages. */
function collectOutput(child: ChildProcess): () => string {
  let text = '';
  const append = (chunk: Buffer) => {
    text = (text + chunk.toString('utf8')).slice(-2000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  return () => text.trim().split('\n').slice(-5).join(' | ') || '(no output)';
}

async function findOnPath(command: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    // Missing or not executable here: keep looking, as the shell would.
    const usable = await fs.access(candidate, constants.X_OK).then(
      () => true,
      () => false,
    );
    if (usable) return candidate;
  }
  return undefined;
}

function note(message: string): void {
  process.stderr.write(`[test services] ${message}\n`);
}
