import { Redis } from 'ioredis';
import type { Config } from './config/index.ts';
import { type Logger, createLogger, redactUrl } from './log.ts';
import { createMetrics, type Metrics } from './metrics/index.ts';
import { startMetricsServer } from './metrics/server.ts';
import { createPool } from './db/pool.ts';
import { startListener, type Listener } from './db/listener.ts';
import { startReader, type Reader } from './db/reader.ts';
import { computeSnapshot } from './db/snapshot.ts';
import { createCommitteeDirectory } from './db/committees.ts';
import { type Position, encodeCursor } from './db/cursor.ts';
import { backlog, prune, prunedPosition } from './db/outbox.ts';
import { createAuthenticator } from './auth/jwt.ts';
import { type ConnectionLimiter, createLocalLimiter, createRedisLimiter } from './auth/limits.ts';
import { type Presence, startPresence } from './cluster/presence.ts';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { createDashboardCache, createDashboardNotifier } from './cache/dashboard.ts';
import { createRoutes, readiness } from './http/routes.ts';
import { createDelivery } from './hub/delivery.ts';
import { createRing } from './hub/ring.ts';
import { createHubServer, type StaticFiles } from './hub/server.ts';
import { type Id, eventTopics } from './events/topics.ts';
import { CloseCode, errorMessage } from './errors.ts';

export type Hub = {
  readonly port: number;
  readonly url: string;
  /** The Prometheus listener (METRICS_PORT; the real port when that is 0), apart from `port`. */
  readonly metricsPort: number;
  /** `http://host:metricsPort`; scrape `${metricsUrl}/metrics`. */
  readonly metricsUrl: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Everything the reader has published so far ends at this cursor. */
  cursor(): string | undefined;
  stop(): Promise<void>;
};

export type HubDeps = { log?: Logger; staticFiles?: StaticFiles; pruneEveryMs?: number };

/**
 * Starts one hub: composes the boundaries and returns a handle whose `stop` releases them
 * in reverse order of start-up (fail readiness, stop accepting, close sockets with 1001,
 * stop the listener and reader, quit Redis, end the pool).
 */
export async function startHub(config: Config, deps: HubDeps = {}): Promise<Hub> {
  if (!config.DATABASE_URL) throw new Error('DATABASE_URL is required');
  const log = deps.log ?? createLogger(config.LOG_LEVEL);
  const metrics = createMetrics();
  const releasers: Array<[string, () => Promise<void> | void]> = [];
  const release = async () => {
    for (const [name, fn] of releasers.reverse()) {
      try {
        await fn();
      } catch (err) {
        log.warn({ step: name, err: errorMessage(err) }, 'shutdown step failed');
      }
    }
    releasers.length = 0;
  };

  try {
    // First up, last down: metrics stay scrapable through start-up and shutdown.
    const metricsServer = await startMetricsServer({ registry: metrics.registry, host: config.METRICS_HOST, port: config.METRICS_PORT, log });
    releasers.push(['metrics listener', () => metricsServer.close()]);

    const pool = createPool(config.DATABASE_URL, log);
    releasers.push(['pool', () => pool.end()]);

    let redis: Redis | undefined;
    if (config.REDIS_URL) {
      const r = new Redis(config.REDIS_URL, {
        maxRetriesPerRequest: 1,
        enableOfflineQueue: false,
        connectTimeout: 2000,
        retryStrategy: (times) => Math.min(2000, 100 * times),
      });
      let up = false;
      r.on('ready', () => {
        up = true;
        log.info({ redis: redactUrl(config.REDIS_URL ?? '') }, 'redis connected');
      });
      r.on('error', (err: Error) => {
        if (up) log.warn({ err: err.message }, 'redis unavailable: dashboard cache bypassed');
        up = false;
      });
      redis = r;
      releasers.push(['redis', async () => void (await r.quit().catch(() => r.disconnect()))]);
    }

    const auth = await createAuthenticator(config);
    const committees = createCommitteeDirectory(pool, log);
    const nodeId = config.NODE_ID ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    const limiter: ConnectionLimiter = redis
      ? createRedisLimiter({ redis, max: config.MAX_CONNECTIONS_PER_SUB, nodeId, leaseTtlMs: config.CONNECTION_LEASE_TTL, log, prefix: config.REDIS_PREFIX })
      : createLocalLimiter(config.MAX_CONNECTIONS_PER_SUB);
    releasers.push(['connection leases', () => limiter.stop()]);
    let presence: Presence | undefined;
    const cache = createDashboardCache({
      compute: (id) => computeSnapshot(pool, id),
      redis,
      extraKeys: config.DASHBOARD_CACHE_KEYS,
      metrics,
      log,
      prefix: config.REDIS_PREFIX,
    });

    let reader: Reader | undefined;
    let listener: Listener | undefined;
    let ready = false;
    const ring = createRing({ events: config.REPLAY_BUFFER_EVENTS, bytes: config.REPLAY_BUFFER_BYTES });
    const position = (): Position | undefined => reader?.position();
    const memoryReport = () => {
      const m = server.delivery.memory();
      const p = process.memoryUsage();
      return {
        ring: { events: m.ring.events, bytes: m.ring.bytes, max_events: config.REPLAY_BUFFER_EVENTS, max_bytes: config.REPLAY_BUFFER_BYTES },
        buffered: { bytes: m.buffered, max_bytes: config.MAX_TOTAL_BUFFERED_BYTES, max_bytes_per_socket: config.MAX_BACKPRESSURE_BYTES },
        heap_used_bytes: p.heapUsed,
        rss_bytes: p.rss,
      };
    };

    const routes = createRoutes({
      auth,
      cache,
      metrics,
      electionOf: committees.cached,
      log,
      health: {
        ready: () =>
          readiness({
            shuttingDown: !ready,
            listenerConnected: listener?.connected() ?? false,
            started: position() !== undefined,
            readerFailure: reader?.failure(),
            now: Date.now(),
          }),
        admin: async () => {
          const p = position();
          let lagMs: number | null = null;
          if (p) lagMs = await backlog(pool, p).then((b) => Math.round(b.oldestAgeSeconds * 1000), () => null);
          const dbUp = listener?.connected() ?? false;
          const failure = reader?.failure();
          const r = readiness({ shuttingDown: !ready, listenerConnected: dbUp, started: p !== undefined, readerFailure: failure, now: Date.now() });
          const redisInfo = { configured: redis !== undefined, connected: redis?.status === 'ready' };
          const nodes = presence ? await presence.nodes().catch(() => []) : [];
          return {
            status: r.ok && !(redisInfo.configured && !redisInfo.connected) ? 'ok' : 'degraded',
            ready: r.ok ? true : r.reason,
            connections: server.connections(),
            topics: server.topicCounts(),
            database: {
              connected: dbUp,
              cursor: p ? encodeCursor(p) : null,
              lag_ms: lagMs,
              // Error texts stay here, behind the admin token: they name databases and hosts.
              listener_error: listener?.lastError() ?? null,
              reader: failure
                ? { failing: true, failed_reads: failure.count, failing_for_ms: Date.now() - failure.since, error: failure.error }
                : { failing: false, failed_reads: 0, failing_for_ms: 0, error: null },
            },
            redis: redisInfo,
            committee_directory: committees.stats(),
            memory: memoryReport(),
            node: nodeId,
            cluster: {
              nodes: nodes.length || 1,
              connections: nodes.length ? nodes.reduce((n, x) => n + x.connections, 0) : server.connections(),
              members: nodes.length ? nodes : [{ id: nodeId, connections: server.connections(), age_ms: 0, self: true }],
            },
          };
        },
      },
    });

    const server = createHubServer({
      config,
      log,
      metrics,
      auth,
      limiter,
      committees,
      routes,
      position,
      ...(deps.staticFiles ? { staticFiles: deps.staticFiles } : {}),
      delivery: (app, sockets) =>
        createDelivery({
          publisher: app,
          sockets,
          reader: { position, waitFor: (p, ms) => reader?.waitFor(p, ms) ?? Promise.resolve(false), failing: () => reader?.failure() !== undefined },
          pool,
          ring,
          electionOf: committees.cached,
          maxBuffered: config.MAX_BACKPRESSURE_BYTES,
          maxTotalBuffered: config.MAX_TOTAL_BUFFERED_BYTES,
          metrics,
          log,
        }),
    });
    // Runs after the reader and the dashboard updates have stopped publishing into the app.
    releasers.push(['http server', () => server.close()]);

    const notifier = createDashboardNotifier({
      cache,
      debounceMs: config.DASHBOARD_DEBOUNCE,
      log,
      waitForCursor: async (p) => {
        if (reader) await reader.waitFor(p, 5000);
      },
      publish: (electionId, frame) =>
        server.delivery.publishFrame(eventTopics({ electionId, committeeId: null, topic: null }), frame, 'dashboard_update'),
    });
    releasers.push(['dashboard updates', () => notifier.stop()]);

    let started: () => void = () => undefined;
    const readerStarted = new Promise<void>((resolve) => (started = resolve));
    reader = startReader({
      pool,
      log,
      // Writers NOTIFY only while a reader sleeps; a reader sleeps only on a listener that listens.
      sleep: { id: `${nodeId}:${randomBytes(4).toString('hex')}`, listening: () => listener?.listening() ?? false },
      onStarted: (p) => {
        ring.init(p);
        started();
      },
      onBadRow: () => metrics.frameErrors.inc({ code: 'bad_outbox_row' }),
      onEvents: (events) => {
        server.delivery.publish(events);
        const elections = new Set<Id>();
        let truncated = false;
        for (const e of events) {
          if (e.kind === 'app') continue;
          if (e.electionId !== null) elections.add(e.electionId);
          if (e.action === 'truncated') truncated = true;
        }
        const last = (events[events.length - 1] as (typeof events)[number]).pos;
        if (truncated) {
          // A TRUNCATE names no election: every snapshot is stale, and every election this node
          // knows or serves gets a fresh dashboard_update.
          for (const id of cache.invalidateAll(last)) elections.add(id);
          for (const t of Object.keys(server.topicCounts())) {
            const m = /^election:(-?\d+)$/.exec(t);
            if (m?.[1]) elections.add(m[1]);
          }
        }
        if (elections.size > 0) {
          cache.invalidate(elections, last);
          notifier.changed(elections);
        }
      },
    });
    const r = reader;
    releasers.push(['reader', () => r.stop()]);

    listener = startListener({
      connectionString: config.DATABASE_URL,
      log,
      onWake: () => r.wake(),
      onState: (up) => metrics.listenerConnected.set(up ? 1 : 0),
    });
    const l = listener;
    releasers.push(['listener', () => l.stop()]);

    // Housekeeping: prune past retention (and learn how far pruning reached), sample backlog.
    let housekeepingStopped = false;
    const housekeeping = async () => {
      if (housekeepingStopped) return;
      try {
        while ((await prune(pool, config.OUTBOX_RETENTION)) >= 10_000);
        server.delivery.setPruned(await prunedPosition(pool));
        const p = position();
        if (p) {
          const b = await backlog(pool, p);
          metrics.outboxBacklog.set(b.count);
          metrics.outboxOldestAge.set(b.oldestAgeSeconds);
        }
      } catch (err) {
        if (!housekeepingStopped) log.warn({ err: errorMessage(err) }, 'outbox housekeeping failed');
      }
    };
    void housekeeping();
    const hk = setInterval(() => void housekeeping(), deps.pruneEveryMs ?? 30_000);
    releasers.push([
      'housekeeping',
      () => {
        housekeepingStopped = true;
        clearInterval(hk);
      },
    ]);

    if (redis) {
      const p = startPresence({ redis, nodeId, connections: () => server.connections(), intervalMs: config.PRESENCE_INTERVAL, log, prefix: config.REDIS_PREFIX });
      presence = p;
      releasers.push(['presence', () => p.stop()]);
    }
    releasers.push(['sockets', () => server.closeAll(CloseCode.goingAway, 'hub shutting down: reconnect and resume', 2000)]);
    // Upgrades need a cursor; give the database a moment, but serve /health and /ready anyway.
    let startTimer: NodeJS.Timeout | undefined;
    await Promise.race([readerStarted, new Promise((r) => (startTimer = setTimeout(r, 5000)))]);
    clearTimeout(startTimer);
    const port = await server.listen(config.HOST, config.PORT);
    releasers.push(['listen socket', () => server.stopAccepting()]);
    ready = true;
    releasers.push(['readiness', () => void (ready = false)]);
    log.info({ port, host: config.HOST, metricsPort: metricsServer.port, metricsHost: config.METRICS_HOST }, 'hub listening');

    // A URL for this machine: wildcard binds are reached on loopback; IPv6 literals need brackets.
    const local = (host: string) => (host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host);
    let stopping: Promise<void> | undefined;
    return {
      port,
      url: `http://${local(config.HOST)}:${port}`,
      metricsPort: metricsServer.port,
      metricsUrl: `http://${local(config.METRICS_HOST)}:${metricsServer.port}`,
      metrics,
      log,
      cursor: () => {
        const p = position();
        return p ? encodeCursor(p) : undefined;
      },
      stop: () => (stopping ??= release()),
    };
  } catch (err) {
    await release();
    throw err;
  }
}
