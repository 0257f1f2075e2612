import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../log.ts';
import { createLifecycle } from './events.ts';

const logged: string[] = [];
const log = createLogger(
  'info',
  new Writable({
    write(chunk: Buffer, _enc, cb) {
      logged.push(chunk.toString());
      cb();
    },
  }),
);

describe('lifecycle events', () => {
  it('calls handlers of that event in order until they are turned off', () => {
    const events = createLifecycle(log);
    const seen: string[] = [];
    const offA = events.on('pruned', (e) => seen.push(`a:${e.mark.id}`));
    events.on('pruned', (e) => seen.push(`b:${e.mark.id}`));
    events.on('listener:up', () => seen.push('up'));
    events.emit('pruned', { mark: { seq: 1n, id: 1n } });
    offA();
    events.emit('pruned', { mark: { seq: 1n, id: 2n } });
    events.emit('listener:down', {});
    expect(seen).toEqual(['a:1', 'b:1', 'b:2']);
  });

  it('a handler that throws is logged and disturbs neither the emitter nor the other handlers', () => {
    const events = createLifecycle(log);
    const seen: bigint[] = [];
    events.on('reader:read', () => {
      throw new Error('boom');
    });
    events.on('reader:read', (e) => seen.push(e.position.seq));
    expect(() => events.emit('reader:read', { position: { seq: 7n, id: 0n }, held: false })).not.toThrow();
    expect(seen).toEqual([7n]);
    expect(logged.some((l) => l.includes('lifecycle event handler failed') && l.includes('boom'))).toBe(true);
  });

  it('a handler may turn itself off while the event is being emitted', () => {
    const events = createLifecycle(log);
    let calls = 0;
    const off = events.on('listener:up', () => {
      calls++;
      off();
    });
    events.emit('listener:up', {});
    events.emit('listener:up', {});
    expect(calls).toBe(1);
  });
});
