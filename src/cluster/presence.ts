/*
 * cluster/: node presence in Redis, for /admin/health (how many nodes, their connections).
 *
 * Lifecycle: started by `startHub` when REDIS_URL is set, stopped early in shutdown. Invariant:
 * presence is informational only; delivery never depends on it (each node reads the outbox
 * itself), and a node not heard from within three intervals drops out of the list.
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';

export type NodeInfo = { id: string; connections: number; age_ms: number; self: boolean };

export type Presence = {
  nodes(): Promise<NodeInfo[]>;
  stop(): Promise<void>;
};

/**
 * Each node announces itself and its connection count in Redis every `intervalMs`; a node
 * not heard from within three intervals is gone from the list.
 */
export function startPresence(opts: {
  redis: Redis;
  nodeId: string;
  connections: () => number;
  intervalMs: number;
  log: Logger;
  prefix: string;
}): Presence {
  const { redis, nodeId, intervalMs, log } = opts;
  const NODES = `${opts.prefix}nodes`;
  const NODE = (id: string) => `${opts.prefix}node:${id}`;
  const ttl = intervalMs * 3;
  const beat = async () => {
    if (redis.status !== 'ready') return;
    const t = await redis.time();
    const now = Number(t[0]) * 1000 + Math.floor(Number(t[1]) / 1000);
    await redis
      .multi()
      .zadd(NODES, now, nodeId)
      .set(NODE(nodeId), String(opts.connections()), 'PX', ttl)
      .zremrangebyscore(NODES, '-inf', now - ttl)
      .exec();
  };
  const run = () =>
    void beat().catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'presence heartbeat failed'));
  run();
  const timer = setInterval(run, intervalMs);
  return {
    async nodes() {
      if (redis.status !== 'ready') return [];
      const t = await redis.time();
      const now = Number(t[0]) * 1000 + Math.floor(Number(t[1]) / 1000);
      const entries = await redis.zrangebyscore(NODES, now - ttl, '+inf', 'WITHSCORES');
      const out: NodeInfo[] = [];
      for (let i = 0; i + 1 < entries.length; i += 2) {
        const id = entries[i] as string;
        const seen = Number(entries[i + 1]);
        const conns = await redis.get(NODE(id));
        out.push({ id, connections: Number(conns ?? 0), age_ms: Math.max(0, now - seen), self: id === nodeId });
      }
      return out.sort((a, b) => a.id.localeCompare(b.id));
    },
    async stop() {
      clearInterval(timer);
      if (redis.status === 'ready')
        await redis
          .multi()
          .zrem(NODES, nodeId)
          .del(NODE(nodeId))
          .exec()
          .catch(() => undefined);
    },
  };
}
