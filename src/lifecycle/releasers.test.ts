import { describe, expect, it } from 'vitest';
import { ShutdownStepError, createReleasers } from './releasers.ts';

describe('releasers', () => {
  it('run last added first, each once, however often release() is called', async () => {
    const order: string[] = [];
    const r = createReleasers({ timeoutMs: 1000 });
    for (const name of ['pool', 'reader', 'sockets']) r.push(name, () => void order.push(name));
    await Promise.all([r.release(), r.release()]);
    await r.release();
    expect(order).toEqual(['sockets', 'reader', 'pool']);
  });

  it('a step that throws or rejects is reported; the rest still run; release() rejects with every failure', async () => {
    const ran: string[] = [];
    const steps: string[] = [];
    const r = createReleasers({ timeoutMs: 1000, onStep: (step, err) => steps.push(err ? `${step}: failed` : step) });
    r.push('pool', () => void ran.push('pool'));
    r.push('redis', () => Promise.reject(new Error('connection reset')));
    r.push('reader', () => {
      throw new Error('already stopped');
    });
    r.push('sockets', () => void ran.push('sockets'));
    const err = await r.release().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ran).toEqual(['sockets', 'pool']);
    expect(steps).toEqual(['sockets', 'reader: failed', 'redis: failed', 'pool']);
    expect(err).toBeInstanceOf(AggregateError);
    const errors = (err as AggregateError).errors as ShutdownStepError[];
    expect(errors.map((e) => [e.step, e.message, (e.cause as Error).message])).toEqual([
      ['reader', 'shutdown step "reader" failed: already stopped', 'already stopped'],
      ['redis', 'shutdown step "redis" failed: connection reset', 'connection reset'],
    ]);
    expect((err as AggregateError).message).toBe('2 of 4 shutdown steps failed: reader, redis');
  });

  it('a step that hangs past the timeout is reported and aborted; the steps after it still run', async () => {
    const ran: string[] = [];
    let aborted = false;
    const r = createReleasers({ timeoutMs: 30 });
    r.push('pool', () => void ran.push('pool'));
    r.push('reader', (signal) => {
      signal.addEventListener('abort', () => (aborted = true));
      return new Promise<void>(() => undefined); // never settles
    });
    r.push('sockets', () => void ran.push('sockets'));
    const err = await r.release().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ran).toEqual(['sockets', 'pool']);
    expect(aborted).toBe(true);
    expect(((err as AggregateError).errors as ShutdownStepError[]).map((e) => e.message)).toEqual([
      'shutdown step "reader" did not finish within 30 ms',
    ]);
  });

  it('a step that finishes in time resolves release() without error', async () => {
    const r = createReleasers({ timeoutMs: 1000 });
    r.push('listener', () => new Promise<void>((resolve) => setTimeout(resolve, 5)));
    await expect(r.release()).resolves.toBeUndefined();
  });
});
