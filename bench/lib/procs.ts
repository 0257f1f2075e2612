import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Api, Child } from './rpc.ts';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const RESULTS = join(ROOT, 'bench/results');
const RUN_TS = join(ROOT, 'bin/run-ts.mjs');

const live = new Set<Child<Api>>();

// Last resort: whatever happens to the orchestrator, no child outlives it.
process.on('exit', () => {
  for (const c of live) if (c.alive) c.proc.kill('SIGKILL');
});

export type SpawnOptions = {
  args?: string[];
  env?: Record<string, string | undefined>;
  nodeArgs?: string[];
  /** Open-file limit for the child (`ulimit -n` in the shell that execs it). */
  fdLimit?: number;
  logDir: string;
  readyTimeoutMs?: number;
};

/**
 * Starts `node bin/run-ts.mjs FILE` through `sh -c 'ulimit -n N; exec …'` (so the child
 * may hold tens of thousands of sockets), with an IPC channel and its output in a log file,
 * and waits for its `ready` notice.
 */
export async function spawnTs<A extends Api>(
  name: string,
  file: string,
  opts: SpawnOptions,
): Promise<{ child: Child<A>; ready: unknown }> {
  mkdirSync(opts.logDir, { recursive: true });
  const logFile = join(opts.logDir, `${name}.log`);
  const fd = openSync(logFile, 'w');
  const limit = opts.fdLimit ?? 65_536;
  // Root may raise the hard limit; anyone else gets the hard limit they have.
  const script = `ulimit -Hn ${limit} 2>/dev/null; ulimit -n ${limit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  const proc = spawn(
    '/bin/sh',
    ['-c', script, 'sh', process.execPath, ...(opts.nodeArgs ?? []), RUN_TS, join(ROOT, file), ...(opts.args ?? [])],
    {
      cwd: ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', fd, fd, 'ipc'],
    },
  );
  closeSync(fd);
  const child = new Child<A>(name, proc, logFile);
  live.add(child as unknown as Child<Api>);
  void child.exited.then(() => live.delete(child as unknown as Child<Api>));
  try {
    const ready = await child.notice('ready', opts.readyTimeoutMs ?? 60_000);
    return { child, ready };
  } catch (err) {
    await child.kill(1000);
    throw new Error(`${(err as Error).message}\n--- ${logFile} (tail) ---\n${tail(logFile)}`, { cause: err });
  }
}

/**
 * The open-file limit a process really got. Raising the hard limit needs CAP_SYS_RESOURCE,
 * which a container may withhold even from root; then `ulimit -n` above stays at the old limit.
 */
export function fdLimitOf(pid: number): number {
  try {
    const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const soft = line?.trim().split(/\s+/)[3];
    return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
  } catch {
    return Number.NaN;
  }
}

export function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Stops every child still running (SIGTERM, then SIGKILL). */
export async function killAll(graceMs = 3000): Promise<void> {
  await Promise.all([...live].map((c) => c.kill(graceMs)));
}

/** Waits until a hub's `/ready` answers 200 (upgrades need its listener and reader); false after `timeoutMs`. */
export async function waitReady(port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (
    (await fetch(`http://127.0.0.1:${port}/ready`).then(
      (r) => r.status,
      () => 0,
    )) !== 200
  ) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
