import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';

/** One open socket's claim on its `sub`'s connection allowance. */
export type Lease = { release(): void };

/** Open sockets per `sub`: `acquire` answers undefined when the limit is reached. */
export type ConnectionLimiter = {
  acquire(sub: string): Promise<Lease | undefined>;
  stop(): Promise<void>;
};

/** A single node's limiter. */
export function createLocalLimiter(max: number): ConnectionLimiter {
  const open = new Map<string, number>();
  return {
    async acquire(sub) {
      const n = open.get(sub) ?? 0;
      if (n >= max) return undefined;
      open.set(sub, n + 1);
      let released = false;
      return {
        release() {
          if (released) return;
          released = true;
          const left = (open.get(sub) ?? 1) - 1;
          if (left <= 0) open.delete(sub);
          else open.set(sub, left);
        },
      };
    },
    async stop() {
      open.clear();
    },
  };
}

// Leases live in a sorted set per sub, scored by their expiry in Redis time. Expired
// leases (a node that died without releasing) are dropped before counting, so counts heal
// by themselves instead of leaking.
const ACQUIRE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1`;

const RENEW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1`;

/**
 * Counts a sub's sockets across every node sharing Redis, with leases renewed every third
 * of their time to live. While Redis is unreachable the node falls back to counting its
 * own sockets (degraded, never refusing everyone).
 */
export function createRedisLimiter(opts: {
  redis: Redis;
  max: number;
  nodeId: string;
  leaseTtlMs: number;
  log: Logger;
  prefix: string;
}): ConnectionLimiter {
  const { redis, max, nodeId, leaseTtlMs, log } = opts;
  const fallback = createLocalLimiter(max);
  const held = new Map<string, Set<string>>(); // sub -> lease members held by this node
  const key = (sub: string) => `${opts.prefix}conns:${sub}`;

  const renew = async () => {
    if (redis.status !== 'ready') return;
    const pipeline = redis.pipeline();
    for (const [sub, members] of held) if (members.size > 0) pipeline.eval(RENEW, 1, key(sub), leaseTtlMs, ...members);
    await pipeline
      .exec()
      .catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'connection lease renewal failed'));
  };
  const timer = setInterval(() => void renew(), Math.max(200, Math.floor(leaseTtlMs / 3)));

  return {
    async acquire(sub) {
      if (redis.status !== 'ready') return fallback.acquire(sub);
      const member = `${nodeId}:${randomBytes(6).toString('hex')}`;
      let ok: unknown;
      try {
        ok = await redis.eval(ACQUIRE, 1, key(sub), max, leaseTtlMs, member);
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'connection lease failed: counting locally');
        return fallback.acquire(sub);
      }
      if (ok !== 1) return undefined;
      let members = held.get(sub);
      if (!members) held.set(sub, (members = new Set()));
      members.add(member);
      return {
        release() {
          const m = held.get(sub);
          if (!m?.delete(member)) return;
          if (m.size === 0) held.delete(sub);
          if (redis.status === 'ready')
            redis
              .zrem(key(sub), member)
              .catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'lease release failed'));
        },
      };
    },
    async stop() {
      clearInterval(timer);
      if (redis.status === 'ready') {
        const pipeline = redis.pipeline();
        for (const [sub, members] of held) pipeline.zrem(key(sub), ...members);
        await pipeline.exec().catch(() => undefined);
      }
      held.clear();
      await fallback.stop();
    },
  };
}
