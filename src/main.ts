import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import type pg from 'pg';
import type { Config } from './config/index.ts';
import { connectionCap } from './config/connection-cap.ts';
import { type Logger, createLogger, redactUrl } from './log.ts';
import { createMetrics, type Metrics } from './metrics/index.ts';
import { startMetricsServer } from './metrics/server.ts';
import { createPool } from './db/pool.ts';
import { startListener } from './db/listener.ts';
import { type Reader, type SleepOptions, startReader } from './db/reader.ts';
import { computeSnapshot, watchedFingerprint } from './db/snapshot.ts';
import { type CommitteeDirectory, createCommitteeDirectory } from './db/committees.ts';
import { backlog, createHistory, prune, prunedPosition, sequenceCommits } from './db/outbox.ts';
import { createAuthenticator } from './auth/jwt.ts';
import { createLocalLimiter, createRedisLimiter } from './auth/limits.ts';
import { startPresence } from './cluster/presence.ts';
import { type DashboardCache, type Interest, createDashboardCache, createInterest } from './cache/dashboard.ts';
import { type LiveDashboards, createLiveDashboards } from './cache/live-dashboards.ts';
import { createHealth } from './http/health.ts';
import { createRoutes } from './http/routes.ts';
import type { StaticFiles } from './http/static.ts';
import { type Delivery, createDelivery } from './hub/delivery.ts';
import { createRing } from './hub/ring.ts';
import { type HubServer, createHubServer } from './hub/server.ts';
import type { OutboxEvent } from './events/event.ts';
import { type Position, compare, encodeCursor } from './events/position.ts';
import { type Id, dashboardTopic } from './events/topics.ts';
import { CloseCode, errorMessage } from './errors.ts';
import { type Lifecycle, type LifecycleEmitter, createLifecycle } from './lifecycle/events.ts';
import { createReleasers } from './lifecycle/releasers.ts';

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
  /**
   * How far pruning had reached (a cursor) when housekeeping last looked, by this node or
   * another; undefined before its first look. Replays re-read the mark themselves.
   */
  prunedMark(): string | undefined;
  /** Facts as they happen: reader reads, pruning learned, listener up/down (src/lifecycle/events.ts). */
  readonly events: Lifecycle;
  /**
   * Releases everything in reverse order of start-up, each step bounded by SHUTDOWN_TIMEOUT;
   * rejects with an AggregateError naming every step that failed or hung (the others still
   * ran). Every call returns the same promise.
   */
  stop(): Promise<void>;
};

export type HubDeps = { log?: Logger; staticFiles?: StaticFiles; pruneEveryMs?: number };

/**
 * Dashboard snapshots are computed on their own small pool, never the reader's: however many
 * elections a statement touches, delivery keeps its connections. Its size is also how many
 * computations run at once on this node.
 */
const DASHBOARD_POOL_SIZE = 2;
/** How long a snapshot request (GET /dashboard/{id}) keeps that election's totals maintained here. */
const DASHBOARD_INTEREST_MS = 60 * 60_000;
const DASHBOARD_INTEREST_MAX = 10_000;

/**
 * Starts one hub: composes the boundaries, each built once what it uses exists, and returns a
 * handle whose `stop` releases them in reverse order of start-up (fail readiness, stop
 * accepting, close sockets with 1001, stop the listener and reader, quit Redis, end the pools).
 */
export async function startHub(config: Config, deps: HubDeps = {}): Promise<Hub> {
  if (!config.DATABASE_URL) throw new Error('DATABASE_URL is required');
  const databaseUrl = config.DATABASE_URL;
  const log = deps.log ?? createLogger(config.LOG_LEVEL);
  const metrics = createMetrics();
  const lifecycle = createLifecycle(log);
  const releasers = createReleasers({
    timeoutMs: config.SHUTDOWN_TIMEOUT,
    onStep: (step, err) => {
      if (err) log.warn({ step, err: errorMessage(err) }, 'shutdown step failed');
    },
  });

  try {
    // First up, last down: metrics stay scrapable through start-up and shutdown.
    const metricsServer = await startMetricsServer({
      registry: metrics.registry,
      host: config.METRICS_HOST,
      port: config.METRICS_PORT,
      log,
    });
    releasers.push('metrics listener', () => metricsServer.close());

    const pool = createPool(databaseUrl, log);
    releasers.push('pool', () => pool.end());
    const dashboardPool = createPool(databaseUrl, log, DASHBOARD_POOL_SIZE, 'election-hub-dashboard');
    releasers.push('dashboard pool', () => dashboardPool.end());
    const redis = config.REDIS_URL ? connectRedis(config.REDIS_URL, log) : undefined;
    if (redis) releasers.push('redis', () => quitRedis(redis));

    const auth = await createAuthenticator(config);
    const committees = createCommitteeDirectory(pool, log);
    const nodeId = config.NODE_ID ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    const limiter = redis
      ? createRedisLimiter({
          redis,
          max: config.MAX_CONNECTIONS_PER_SUB,
          nodeId,
          leaseTtlMs: config.CONNECTION_LEASE_TTL,
          log,
          prefix: config.REDIS_PREFIX,
        })
      : createLocalLimiter(config.MAX_CONNECTIONS_PER_SUB);
    releasers.push('connection leases', () => limiter.stop());
    const interest = createInterest({ ttlMs: DASHBOARD_INTEREST_MS, max: DASHBOARD_INTEREST_MAX });
    const cache = createDashboardCache({
      compute: (id) => computeSnapshot(dashboardPool, id),
      concurrency: DASHBOARD_POOL_SIZE,
      redis,
      extraKeys: config.DASHBOARD_CACHE_KEYS,
      metrics,
      log,
      prefix: config.REDIS_PREFIX,
    });

    const server = createHubServer({ config, log, metrics, maxSockets: connectionCap(config.MAX_CONNECTIONS) });
    // Runs after the reader and the dashboard updates have stopped publishing into the app.
    releasers.push('http server', () => server.close());

    // Writers NOTIFY only while a reader sleeps; a reader sleeps only on a listener that listens.
    let listening: () => boolean = () => false;
    const { reader, delivery, dashboards, started } = startPipeline({
      config,
      sleep: { id: `${nodeId}:${randomBytes(4).toString('hex')}`, listening: () => listening() },
      pool,
      dashboardPool,
      server,
      committees,
      cache,
      interest,
      metrics,
      lifecycle,
      log,
    });
    releasers.push('reader', () => reader.stop());
    // Before the reader: an update waiting for the reader to reach its cursor gives up.
    releasers.push('dashboard updates', () => dashboards.stop());

    const listener = startListener({
      connectionString: databaseUrl,
      log,
      onWake: () => reader.wake(),
      onState: (up) => {
        metrics.listenerConnected.set(up ? 1 : 0);
        lifecycle.emit(up ? 'listener:up' : 'listener:down', {});
      },
    });
    releasers.push('listener', () => listener.stop());
    listening = () => listener.listening();

    let prunedMark: Position | undefined;
    const housekeeping = startHousekeeping({
      pool,
      retentionMs: config.OUTBOX_RETENTION,
      everyMs: deps.pruneEveryMs ?? 30_000,
      position: () => reader.position(),
      onPruned: (mark) => {
        delivery.setPruned(mark);
        prunedMark = mark;
        lifecycle.emit('pruned', { mark });
        // Pruned past this node's reader (it fell behind the retention): the totals' chain has a gap.
        const p = reader.position();
        if (p && compare(mark, p) > 0) dashboards.resyncAll('gap');
      },
      metrics,
      log,
    });
    releasers.push('housekeeping', () => housekeeping.stop());

    const presence = redis
      ? startPresence({
          redis,
          nodeId,
          connections: () => server.connections(),
          intervalMs: config.PRESENCE_INTERVAL,
          log,
          prefix: config.REDIS_PREFIX,
        })
      : undefined;
    if (presence) releasers.push('presence', () => presence.stop());

    let ready = false;
    const health = createHealth({
      accepting: () => ready,
      listener,
      reader,
      lagMs: (p) =>
        backlog(pool, p).then(
          (b) => Math.round(b.oldestAgeSeconds * 1000),
          () => null,
        ),
      redis: redis && { connected: () => redis.status === 'ready' },
      nodes: presence && (() => presence.nodes()),
      connections: () => server.connections(),
      topicCounts: () => server.topicCounts(),
      committeeDirectory: () => committees.stats(),
      memory: () => memoryReport(config, delivery),
      nodeId,
    });
    server.serve({
      // GET /dashboard/{id} is answered from the maintained totals.
      routes: createRoutes({
        auth,
        cache: { get: (id) => dashboards.snapshot(id) },
        metrics,
        electionOf: committees.cached,
        log,
        health,
      }),
      staticFiles: deps.staticFiles,
      delivery,
      auth,
      limiter,
      committees,
      position: () => reader.position(),
      // A socket starts receiving these elections' dashboards: the full state first.
      onDashboards: (ws, ids) => {
        for (const id of ids) {
          const full = dashboards.joined(id);
          if (full !== undefined) delivery.send(ws, full, 'dashboard_update');
        }
      },
    });
    releasers.push('sockets', (signal) =>
      server.closeAll(CloseCode.goingAway, 'hub shutting down: reconnect and resume', signal),
    );

    // Upgrades need a cursor; give the database a moment, but serve /health and /ready anyway.
    let startTimer: NodeJS.Timeout | undefined;
    await Promise.race([started, new Promise((r) => (startTimer = setTimeout(r, 5000)))]);
    clearTimeout(startTimer);
    const port = await server.listen(config.HOST, config.PORT);
    releasers.push('listen socket', () => server.stopAccepting());
    ready = true;
    releasers.push('readiness', () => void (ready = false));
    log.info(
      { port, host: config.HOST, metricsPort: metricsServer.port, metricsHost: config.METRICS_HOST },
      'hub listening',
    );

    // A URL for this machine: wildcard binds are reached on loopback; IPv6 literals need brackets.
    const local = (host: string) =>
      host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
    return {
      port,
      url: `http://${local(config.HOST)}:${port}`,
      metricsPort: metricsServer.port,
      metricsUrl: `http://${local(config.METRICS_HOST)}:${metricsServer.port}`,
      metrics,
      log,
      cursor: () => {
        const p = reader.position();
        return p ? encodeCursor(p) : undefined;
      },
      prunedMark: () => (prunedMark ? encodeCursor(prunedMark) : undefined),
      events: lifecycle,
      stop: () => releasers.release(),
    };
  } catch (err) {
    // Each failed step was logged (onStep); the start-up error is the one that says what happened.
    await releasers.release().catch(() => undefined);
    throw err;
  }
}

/**
 * The shared Redis connection (dashboard cache, connection leases, node presence): fails fast
 * while Redis is down (no offline queue) and reconnects by itself.
 */
function connectRedis(url: string, log: Logger): Redis {
  const r = new Redis(url, {
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(2000, 100 * times),
  });
  let up = false;
  r.on('ready', () => {
    up = true;
    log.info({ redis: redactUrl(url) }, 'redis connected');
  });
  r.on('error', (err: Error) => {
    if (up) log.warn({ err: err.message }, 'redis unavailable: dashboard cache bypassed');
    up = false;
  });
  return r;
}

const quitRedis = async (r: Redis) => void (await r.quit().catch(() => r.disconnect()));

/**
 * The outbox reader and what it feeds, built in one synchronous step: delivery and the live
 * dashboards need the reader's position, the reader hands them every batch. The reader calls
 * back only once its first read has completed (after an await), when all three exist.
 */
function startPipeline(d: {
  config: Config;
  sleep: SleepOptions;
  pool: pg.Pool;
  dashboardPool: pg.Pool;
  server: HubServer;
  committees: CommitteeDirectory;
  cache: DashboardCache;
  interest: Interest;
  metrics: Metrics;
  lifecycle: LifecycleEmitter;
  log: Logger;
}): { reader: Reader; delivery: Delivery; dashboards: LiveDashboards; started: Promise<void> } {
  const { config, sleep, pool, dashboardPool, server, committees, cache, interest, metrics, lifecycle, log } = d;
  const ring = createRing({ events: config.REPLAY_BUFFER_EVENTS, bytes: config.REPLAY_BUFFER_BYTES });
  let onStarted: () => void = () => undefined;
  const started = new Promise<void>((resolve) => (onStarted = resolve));
  const reader = startReader({
    pool,
    log,
    sleep,
    onStarted: (p) => {
      ring.init(p);
      onStarted();
      lifecycle.emit('reader:started', { position: p });
    },
    onRead: (p, held) => lifecycle.emit('reader:read', { position: p, held }),
    onLost: (lost, restart) => {
      delivery.setLost(lost);
      if (!restart) return;
      // What this node handed out from the lost keys no longer exists (sql/012).
      metrics.readerRestarts.inc();
      delivery.restart(restart);
      cache.invalidateAll(restart);
      dashboards.resyncAll('gap');
      lifecycle.emit('reader:restarted', { position: restart });
    },
    onBadRow: () => {
      metrics.frameErrors.inc({ code: 'bad_outbox_row' });
      // A skipped row is a gap in the totals' chain: recompute what is held.
      dashboards.resyncAll('gap');
    },
    onEvents: (events) => publish(events),
  });

  const delivery = createDelivery({
    publisher: server.publisher,
    sockets: server.sockets,
    reader: {
      position: () => reader.position(),
      waitFor: (p, ms) => reader.waitFor(p, ms),
      failing: () => reader.failure() !== undefined,
    },
    history: createHistory(pool),
    ring,
    electionOf: committees.cached,
    maxBuffered: config.MAX_BACKPRESSURE_BYTES,
    maxTotalBuffered: config.MAX_TOTAL_BUFFERED_BYTES,
    compressMinBytes: config.WS_COMPRESSION_MIN_BYTES,
    metrics,
    log,
  });

  // Dashboards: totals maintained from the stream (src/cache/live-dashboards.ts); their updates
  // go to the dashboard:{id} topic's sockets.
  const dashboards = createLiveDashboards({
    compute: (id, o) => cache.refresh(id, o),
    position: () => reader.position(),
    delivered: (p) => reader.waitFor(p, 5000),
    // Keys for what has committed now, and the frontier after them (one short call: not behind computations).
    horizon: async () => ({ seq: await sequenceCommits(pool), id: 0n }),
    subscribers: (id) => server.publisher.numSubscribers(dashboardTopic(id)),
    interested: (id) => interest.has(id),
    onRequest: (id) => interest.touch(id),
    publish: (id, frame) => delivery.publishFrame([dashboardTopic(id)], frame, 'dashboard_update'),
    debounceMs: config.DASHBOARD_DEBOUNCE,
    verifyMs: config.DASHBOARD_VERIFY_INTERVAL,
    watched: () => watchedFingerprint(dashboardPool),
    metrics,
    log,
  });

  function publish(events: OutboxEvent[]) {
    delivery.publish(events);
    dashboards.apply(events);
    const elections = new Set<Id>();
    for (const e of events) {
      if (e.kind === 'app') continue;
      if (e.electionId !== null) elections.add(e.electionId);
      if (e.old?.electionId) elections.add(e.old.electionId); // a row moved out of it
    }
    if (elections.size > 0) cache.invalidate(elections, (events[events.length - 1] as OutboxEvent).pos);
  }

  return { reader, delivery, dashboards, started };
}

/** Outbox housekeeping, now and every `everyMs`: prune past retention (and learn how far pruning reached: `onPruned`), sample the backlog. */
function startHousekeeping(d: {
  pool: pg.Pool;
  retentionMs: number;
  everyMs: number;
  position: () => Position | undefined;
  onPruned: (p: Position) => void;
  metrics: Metrics;
  log: Logger;
}): { stop(): void } {
  const { pool, metrics, log } = d;
  let housekeepingStopped = false;
  const housekeeping = async () => {
    if (housekeepingStopped) return;
    try {
      while ((await prune(pool, d.retentionMs)) >= 10_000);
      d.onPruned(await prunedPosition(pool));
      const p = d.position();
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
  const hk = setInterval(() => void housekeeping(), d.everyMs);
  return {
    stop() {
      housekeepingStopped = true;
      clearInterval(hk);
    },
  };
}

/** /admin/health's memory figures: the ring's contents and what sockets buffer, against their budgets. */
function memoryReport(config: Config, delivery: Delivery) {
  const m = delivery.memory();
  const p = process.memoryUsage();
  return {
    ring: {
      events: m.ring.events,
      bytes: m.ring.bytes,
      max_events: config.REPLAY_BUFFER_EVENTS,
      max_bytes: config.REPLAY_BUFFER_BYTES,
    },
    buffered: {
      bytes: m.buffered,
      max_bytes: config.MAX_TOTAL_BUFFERED_BYTES,
      max_bytes_per_socket: config.MAX_BACKPRESSURE_BYTES,
    },
    heap_used_bytes: p.heapUsed,
    rss_bytes: p.rss,
  };
}
