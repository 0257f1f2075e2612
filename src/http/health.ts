import type { NodeInfo } from '../cluster/presence.ts';
import { type Position, encodeCursor } from '../events/position.ts';
import { type HealthSource, readiness } from './routes.ts';

/** What `/ready` and `/admin/health` report, each part read when asked. */
export type HealthInputs = {
  /** False before the hub listens and once its shutdown began. */
  accepting: () => boolean;
  listener: { connected(): boolean; lastError(): string | undefined };
  reader: { position(): Position | undefined; failure(): { since: number; count: number; error: string } | undefined };
  /** Age of the oldest row not read yet; null when it could not be measured. */
  lagMs: (after: Position) => Promise<number | null>;
  /** undefined without REDIS_URL. */
  redis: { connected(): boolean } | undefined;
  /** The cluster's nodes (with Redis); undefined on a single node. */
  nodes: (() => Promise<NodeInfo[]>) | undefined;
  connections: () => number;
  topicCounts: () => Record<string, number>;
  committeeDirectory: () => Record<string, number>;
  memory: () => Record<string, unknown>;
  nodeId: string;
};

/**
 * Readiness (`/ready`: a reason class only) and the admin report (`/admin/health`: the details,
 * error texts included, behind the admin token).
 */
export function createHealth(h: HealthInputs): HealthSource {
  const position = () => h.reader.position();
  return {
    ready: () =>
      readiness({
        shuttingDown: !h.accepting(),
        listenerConnected: h.listener.connected(),
        started: position() !== undefined,
        readerFailure: h.reader.failure(),
        now: Date.now(),
      }),
    admin: async () => {
      const p = position();
      let lagMs: number | null = null;
      if (p) lagMs = await h.lagMs(p);
      const dbUp = h.listener.connected();
      const failure = h.reader.failure();
      const r = readiness({
        shuttingDown: !h.accepting(),
        listenerConnected: dbUp,
        started: p !== undefined,
        readerFailure: failure,
        now: Date.now(),
      });
      const redisInfo = { configured: h.redis !== undefined, connected: h.redis?.connected() ?? false };
      const nodes = h.nodes ? await h.nodes().catch(() => []) : [];
      return {
        status: r.ok && !(redisInfo.configured && !redisInfo.connected) ? 'ok' : 'degraded',
        ready: r.ok ? true : r.reason,
        connections: h.connections(),
        topics: h.topicCounts(),
        database: {
          connected: dbUp,
          cursor: p ? encodeCursor(p) : null,
          lag_ms: lagMs,
          // Error texts stay here, behind the admin token: they name databases and hosts.
          listener_error: h.listener.lastError() ?? null,
          reader: failure
            ? {
                failing: true,
                failed_reads: failure.count,
                failing_for_ms: Date.now() - failure.since,
                error: failure.error,
              }
            : { failing: false, failed_reads: 0, failing_for_ms: 0, error: null },
        },
        redis: redisInfo,
        committee_directory: h.committeeDirectory(),
        memory: h.memory(),
        node: h.nodeId,
        cluster: {
          nodes: nodes.length || 1,
          connections: nodes.length ? nodes.reduce((n, x) => n + x.connections, 0) : h.connections(),
          members: nodes.length ? nodes : [{ id: h.nodeId, connections: h.connections(), age_ms: 0, self: true }],
        },
      };
    },
  };
}
