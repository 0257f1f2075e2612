import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export type HubProcess = {
  port: number;
  url: string;
  metricsUrl: string;
  child: ChildProcess;
  lines: string[];
  stop(signal?: NodeJS.Signals): Promise<number | null>;
};

/** Runs `election-hub serve` in its own process (port 0, metrics on port 0) and resolves once it listens. */
export async function spawnHub(env: Record<string, string>): Promise<HubProcess> {
  const child = spawn(process.execPath, ['bin/election-hub.mjs', 'serve'], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      PORT: '0',
      HOST: '127.0.0.1',
      METRICS_PORT: '0',
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let metricsPort = 0;
  const port = await new Promise<number>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on('line', (line) => {
      if (/"level":(4|5)\d/.test(line)) process.stderr.write(`[hub process] ${line}\n`);
      lines.push(line);
      const m = /"port":(\d+)/.exec(line);
      if (m && line.includes('hub listening')) {
        metricsPort = Number(/"metricsPort":(\d+)/.exec(line)?.[1] ?? 0);
        resolve(Number(m[1]));
      }
    });
    void exited.then((code) => reject(new Error(`hub process exited with ${code} before listening`)));
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    child,
    lines,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}
