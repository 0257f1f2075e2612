/*
 * The hub as the bench runs it: one child process calling startHub (what `election-hub
 * serve` does, minus the static dashboard page), configured from the environment, logging
 * to stdout (the orchestrator points that at a file). Over IPC it answers `gc` (with
 * --expose-gc) so memory is read after a collection, and `stop` for an orderly shutdown
 * (which also lets --cpu-prof write its profile).
 */
import { formatConfigErrors, parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { startHub } from '../src/main.ts';
import { notify, serve } from './lib/rpc.ts';

const parsed = parseConfig(process.env, { database: true });
if (!parsed.ok) {
  console.error(formatConfigErrors(parsed.errors));
  process.exit(2);
}
const hub = await startHub(parsed.config, { log: createLogger(parsed.config.LOG_LEVEL) });

let stopping: Promise<void> | undefined;
const stop = () =>
  (stopping ??= hub.stop().then(() => {
    setImmediate(() => process.exit(0));
  }));

const gc = (globalThis as { gc?: () => void }).gc;
const api = {
  gc() {
    gc?.();
    gc?.();
    return { exposed: gc !== undefined };
  },
  memory: () => process.memoryUsage(),
  stop,
};
export type HubProcessApi = typeof api;

process.on('SIGTERM', () => void stop());
serve(api, () => void stop());
notify('ready', { port: hub.port, metricsPort: hub.metricsPort, pid: process.pid });
