// A newcomer as root with the checkout (and so `.data/`) inside a private directory (a 0700 home,
// `mktemp -d`): the embedded PostgreSQL runs as the `postgres` account, which cannot enter it.
// .ci/run also runs this file, services.test.ts and the demo test from a clone in `mktemp -d`,
// where the binaries under node_modules are out of that account's reach as well.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../demo/embedded-postgres.ts';
import { waitUntil } from './support/hub.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const asRoot = os.userInfo().uid === 0;

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Live processes whose command line mentions `needle` (Linux /proc). */
async function processesMentioning(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => ''); // ended meanwhile
    if (cmdline.split('\0').join(' ').includes(needle)) pids.push(Number(entry));
  }
  return pids;
}

describe('embedded PostgreSQL with its data inside a private (0700) directory', () => {
  let home: string;
  /** Where the cluster really is (a staging directory under root), removed at the end. */
  const clusters = new Set<string>();

  beforeAll(async () => {
    home = await fs.mkdtemp(path.join(os.tmpdir(), 'election-hub-private-'));
    expect((await fs.stat(home)).mode & 0o777).toBe(0o700);
  });
  afterAll(async () => {
    for (const dir of clusters) await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(home, { recursive: true, force: true });
  });

  it('starts, keeps its data for the next start, and stops without leftovers', async () => {
    const dataDir = path.join(home, 'checkout', '.data', 'postgres');
    const first = await startEmbeddedPostgres({ dataDir });
    const real = await fs.realpath(dataDir);
    clusters.add(real);
    try {
      await query(first.url, `create table kept (v text); insert into kept values ('still here')`);
    } finally {
      await first.stop();
    }
    if (asRoot) {
      // The requested path names the cluster; the files are where the account can reach them.
      expect((await fs.lstat(dataDir)).isSymbolicLink()).toBe(true);
      expect(real.startsWith(path.join(home, path.sep))).toBe(false);
    }
    expect(await processesMentioning(real)).toEqual([]);

    const second = await startEmbeddedPostgres({ dataDir });
    try {
      expect(await query<{ v: string }>(second.url, 'select v from kept')).toEqual([{ v: 'still here' }]);
    } finally {
      await second.stop();
    }
    expect(await fs.realpath(dataDir)).toBe(real);
    expect(await processesMentioning(real)).toEqual([]);
  });

  it('`npm run demo` runs with its data directory there and stops on SIGTERM', async () => {
    const dataDir = path.join(home, 'demo', '.data');
    let output = '';
    const child: ChildProcess = spawn(process.execPath, ['bin/election-hub.mjs', 'demo'], {
      cwd: ROOT,
      env: { ...process.env, PORT: '0', DEMO_DATA_DIR: dataDir, JWT_SECRET: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
    try {
      await waitUntil(
        () => /^admin token: \S+$/m.test(output) || child.exitCode !== null,
        120_000,
        'the demo to print its URL and token',
      );
      expect(child.exitCode, output).toBeNull();
      clusters.add(await fs.realpath(path.join(dataDir, 'postgres')));
      const port = Number(/^dashboard: http:\/\/127\.0\.0\.1:(\d+)\//m.exec(output)?.[1]);
      expect(port, output).toBeGreaterThan(0);
      await waitUntil(
        async () => (await fetch(`http://127.0.0.1:${port}/ready`)).status === 200,
        15_000,
        '/ready to answer 200',
      );
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    expect(await exited, output).toEqual({ code: 0, signal: null });
    expect(output).toMatch(/stopped PostgreSQL/);
    for (const dir of clusters) expect(await processesMentioning(dir)).toEqual([]);
  }, 180_000);
});
