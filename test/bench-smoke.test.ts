import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, inject, test } from 'vitest';
import { SCENARIOS as LIST } from '../bench/scenarios/index.ts';

/*
 * The benchmark harness in its smoke mode (tiny sizes): it must run every scenario end to
 * end, clean up, and print each with a numeric figure and ratio. No timing is asserted —
 * figures on a shared CI machine mean nothing; `npm run bench -- --quick` is for numbers.
 */

const ROOT = resolve(import.meta.dirname, '..');
// Every row name of every scenario that runs in smoke mode (fan-out, latency, peers, memory,
// connection-rate, write-cost; election-night is full mode only): a scenario added to
// bench/scenarios/index.ts is held to printing its rows here too.
const SCENARIOS = [
  ...new Set(LIST.filter((s) => s.sizes('smoke', {}) !== undefined).flatMap((s) => s.reports ?? [s.name])),
];
const LIMIT_MS = 170_000;
const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function runSmoke(
  out: string,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, ['bin/run-ts.mjs', 'bench/run.ts', '--smoke', '--out', out], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: inject('databaseUrl'), REDIS_URL: inject('redisUrl') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    // SIGTERM lets the harness stop its children and drop its database; SIGKILL if it hangs.
    const term = setTimeout(() => child.kill('SIGTERM'), LIMIT_MS);
    const kill = setTimeout(() => child.kill('SIGKILL'), LIMIT_MS + 10_000);
    child.on('close', (code, signal) => {
      clearTimeout(term);
      clearTimeout(kill);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

test(
  'npm run bench -- --smoke prints every scenario with a figure and a ratio',
  async () => {
    const out = join(dir, 'smoke.json');
    const r = await runSmoke(out);
    expect(r.code, `exit ${r.code ?? r.signal}\n${r.stderr.slice(-3000)}`).toBe(0);

    // Table rows: scenario | case | figure | baseline | ratio | target | result
    const rows = r.stdout
      .split('\n')
      .map((l) => l.split(' | ').map((c) => c.trim()))
      .filter((c) => c.length === 7 && SCENARIOS.includes(c[0] ?? ''));
    for (const name of SCENARIOS) {
      const mine = rows.filter((c) => c[0] === name);
      expect(mine.length, `no row for ${name} in:\n${r.stdout}`).toBeGreaterThan(0);
      for (const [, , figure, , ratio, , result] of mine) {
        expect(figure, `${name} figure`).toMatch(/\d/);
        expect(ratio, `${name} ratio`).toMatch(/\d+(\.\d+)?×/);
        expect(['PASS', 'MISS', 'info']).toContain(result);
      }
    }

    const json = JSON.parse(readFileSync(out, 'utf8')) as {
      mode: string;
      rows: Array<{ scenario: string; value: number; ratio: number }>;
    };
    expect(json.mode).toBe('smoke');
    for (const row of json.rows) {
      expect(Number.isFinite(row.value), `${row.scenario} value`).toBe(true);
      expect(Number.isFinite(row.ratio), `${row.scenario} ratio`).toBe(true);
    }
  },
  LIMIT_MS + 20_000,
);
