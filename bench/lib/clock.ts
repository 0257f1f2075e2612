import { performance } from 'node:perf_hooks';

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable across the bench's
 * processes on one machine (each process anchors `performance.now()` to the system clock
 * at start-up). Latency probes carry this value from the writer to the clients.
 */
export const wallNow = (): number => performance.timeOrigin + performance.now();

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
