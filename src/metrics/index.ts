/*
 * metrics/: one prom-client registry per hub (this file) and its own listener (server.ts).
 *
 * Lifecycle: the metrics listener starts first and stops last, so a hub is scrapable through
 * start-up and shutdown; it is apart from the public port (404 there). Invariant: every label
 * value comes from a bounded list (outside text maps to `other`), so nothing a client sends can
 * grow the number of series.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CloseCode, FRAME_ERROR_CODES } from '../errors.ts';

/** The value any label gets for something outside its known set. */
export const OTHER = 'other';

/**
 * Every label value the hub can export (README, Operations): a label value never comes from free
 * text in a token, a client frame or a row, or one token with `role: <random>` per connection
 * (or one odd close code from a client) would grow a new series each time. Each value here
 * exists at 0 from the start, so a quiet hub shows zeros, not "No data".
 */
export const LABEL_VALUES = {
  /** Token roles: `admin` is the only one with a meaning; `none` when the claim is absent. */
  role: ['admin', 'none', OTHER],
  /** Frame types sent; application events (their type is the application's) are `app_event`. */
  type: [
    'connection_success',
    'subscribed',
    'unsubscribed',
    'resync',
    'pong',
    'error',
    'dashboard_update',
    'guarantee_update',
    'attendance_update',
    'voting_update',
    'app_event',
    OTHER,
  ],
  /** Watched kinds (the reference tables', README "Database side") and application events. */
  kind: ['guarantee', 'attendance', 'vote', 'app', OTHER],
  action: ['created', 'updated', 'deleted', 'truncated', 'published', OTHER],
  /** Close codes the hub sends or a client commonly sends; a client may send any 1000-4999. */
  code: [
    ...new Set(['1000', '1001', '1005', '1006', '1008', '1009', '1011', ...Object.values(CloseCode).map(String)]),
    OTHER,
  ],
  /** Why an upgrade or an HTTP request was refused (src/auth/jwt.ts reasons and the upgrade's own). */
  reason: [
    'missing',
    'missing_exp',
    'malformed',
    'bad_claims',
    'expired',
    'not_yet_valid',
    'bad_audience',
    'bad_issuer',
    'bad_algorithm',
    'bad_signature',
    'unknown_key',
    'jwks_unavailable',
    'origin',
    'too_many_connections',
    'node_full',
    'shutting_down',
    OTHER,
  ],
  /** Client error codes (src/errors.ts), oversize frames and malformed outbox rows. */
  errorCode: [...FRAME_ERROR_CODES, 'too_big', 'bad_outbox_row', OTHER],
  result: ['hit', 'miss'],
  /**
   * Why a dashboard snapshot was computed from PostgreSQL: `first_use` (nothing cached yet),
   * `change` (a change made the cached one stale), `resync` (a full recomputation, e.g. after a
   * TRUNCATE or a gap), `verify` (a periodic check of the incremental totals against the database).
   */
  computation: ['first_use', 'change', 'resync', 'verify', OTHER],
  /** Why a socket was closed with 4008 (SLOW_CLOSE_CAUSES). */
  slowCloseCause: ['socket_limit', 'global_budget'],
} as const;

/** Maps each label value outside its known set to `other` (never throws: metrics must not fail a request). */
function bounder<L extends string>(known: Record<L, readonly string[]>) {
  const sets = Object.entries(known).map(
    ([label, values]) => [label as L, new Set(values as readonly string[])] as const,
  );
  return (values: Partial<Record<L, string | number | undefined>>): Record<L, string> => {
    const out = {} as Record<L, string>;
    for (const [label, set] of sets) {
      const v = String(values[label] ?? '');
      out[label] = set.has(v) ? v : OTHER;
    }
    return out;
  };
}

/** Every combination of the known values (the series created at 0). */
function combinations<L extends string>(known: Record<L, readonly string[]>): Array<Record<L, string>> {
  let out: Array<Record<string, string>> = [{}];
  for (const [label, values] of Object.entries(known) as Array<[string, readonly string[]]>) {
    out = out.flatMap((partial) => values.map((v) => ({ ...partial, [label]: v })));
  }
  return out as Array<Record<L, string>>;
}

type Init<L extends string> = Array<Record<L, string>>;

/** A counter whose label values are bounded to `known`, each combination in `init` at 0. */
function boundedCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  known: Record<L, readonly string[]>,
  init: Init<L> = combinations(known),
) {
  const counter = new Counter<L>({ name, help, labelNames: Object.keys(known) as L[], registers: [registry] });
  const bound = bounder(known);
  for (const labels of init) counter.inc(labels, 0);
  return {
    inc(labels: Partial<Record<L, string | number | undefined>>, value = 1) {
      counter.inc(bound(labels), value);
    },
  };
}

/** A gauge whose label values are bounded to `known`, each at 0 from the start. */
function boundedGauge<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  known: Record<L, readonly string[]>,
) {
  const gauge = new Gauge<L>({ name, help, labelNames: Object.keys(known) as L[], registers: [registry] });
  const bound = bounder(known);
  for (const labels of combinations(known)) gauge.set(labels, 0);
  return {
    inc: (labels: Partial<Record<L, string | number | undefined>>, value = 1) => gauge.inc(bound(labels), value),
    dec: (labels: Partial<Record<L, string | number | undefined>>, value = 1) => gauge.dec(bound(labels), value),
  };
}

/** The (kind, action) pairs that occur: row kinds with row actions, application events as `published`. */
const EVENT_SERIES: Init<'kind' | 'action'> = [
  ...['guarantee', 'attendance', 'vote'].flatMap((kind) =>
    ['created', 'updated', 'deleted', 'truncated'].map((action) => ({ kind, action })),
  ),
  { kind: 'app', action: 'published' },
];

/** One registry per hub instance, so two hubs can run in one process (tests, benchmarks). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // prom-client names these gauges *_total (sums of the labelled nodejs_active_* gauges, which
  // stay): `promtool check metrics` rightly refuses a non-counter with that suffix.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
    registry.removeSingleMetric(name);
  }
  const r = [registry];
  const v = LABEL_VALUES;
  return {
    registry,
    connections: new Gauge({ name: 'hub_connections', help: 'Open WebSocket connections on this node', registers: r }),
    connectionsByRole: boundedGauge(
      registry,
      'hub_connections_by_role',
      'Open WebSocket connections by token role (admin, none, other)',
      { role: v.role },
    ),
    connectionsOpened: new Counter({
      name: 'hub_connections_opened_total',
      help: 'WebSocket connections opened',
      registers: r,
    }),
    connectionsClosed: boundedCounter(
      registry,
      'hub_connections_closed_total',
      'WebSocket connections closed, by close code',
      { code: v.code },
    ),
    events: boundedCounter(
      registry,
      'hub_events_total',
      'Outbox events read and published',
      { kind: v.kind, action: v.action },
      EVENT_SERIES,
    ),
    messagesSent: boundedCounter(registry, 'hub_messages_sent_total', 'Frames delivered to sockets, by frame type', {
      type: v.type,
    }),
    bytesSent: boundedCounter(
      registry,
      'hub_bytes_sent_total',
      'Bytes of frames delivered to sockets (frame size times receivers), by frame type',
      { type: v.type },
    ),
    deliveryLag: new Histogram({
      name: 'hub_event_delivery_lag_seconds',
      help: 'Time from the change being captured in PostgreSQL to its publication to sockets',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    authFailures: boundedCounter(registry, 'hub_auth_failures_total', 'Refused authentications, by reason', {
      reason: v.reason,
    }),
    listenerConnected: new Gauge({
      name: 'hub_listener_connected',
      help: '1 while the database listener is connected',
      registers: r,
    }),
    cacheRequests: boundedCounter(registry, 'hub_dashboard_cache_requests_total', 'Dashboard snapshot cache lookups', {
      result: v.result,
    }),
    dashboardComputations: boundedCounter(
      registry,
      'hub_dashboard_computations_total',
      'Dashboard snapshots computed from PostgreSQL, by reason',
      { reason: v.computation },
    ),
    dashboardDrift: new Counter({
      name: 'hub_dashboard_drift_total',
      help: 'Dashboard totals found different from the database when verified (each one corrected)',
      registers: r,
    }),
    readerRestarts: new Counter({
      name: 'hub_reader_restarts_total',
      help: 'Times the outbox reader started again after keys it had read were lost in a crash recovery of PostgreSQL (its sockets closed with 4009)',
      registers: r,
    }),
    slowReaderCloses: boundedCounter(
      registry,
      'hub_slow_reader_closes_total',
      'Sockets closed with 4008 for falling behind: over MAX_BACKPRESSURE_BYTES (socket_limit) or the most buffered while all sockets passed MAX_TOTAL_BUFFERED_BYTES (global_budget)',
      { cause: v.slowCloseCause },
    ),
    replayBufferBytes: new Gauge({
      name: 'hub_replay_buffer_bytes',
      help: 'Bytes of the frames held in the replay ring (REPLAY_BUFFER_BYTES caps it)',
      registers: r,
    }),
    replayBufferEvents: new Gauge({
      name: 'hub_replay_buffer_events',
      help: 'Events held in the replay ring (REPLAY_BUFFER_EVENTS caps it)',
      registers: r,
    }),
    bufferedBytes: new Gauge({
      name: 'hub_socket_buffered_bytes',
      help: 'Bytes buffered for all sockets of this node at the last check (MAX_TOTAL_BUFFERED_BYTES caps it)',
      registers: r,
    }),
    outboxBacklog: new Gauge({
      name: 'hub_outbox_backlog_events',
      help: 'Outbox rows committed but not yet read by this node (sampled, capped at 100000)',
      registers: r,
    }),
    outboxOldestAge: new Gauge({
      name: 'hub_outbox_oldest_pending_age_seconds',
      help: 'Age of the oldest outbox row not yet read by this node (sampled)',
      registers: r,
    }),
    frameErrors: boundedCounter(registry, 'hub_client_errors_total', 'Client frames answered with an error, by code', {
      code: v.errorCode,
    }),
  };
}

/** Why a socket was closed with 4008. */
export const SLOW_CLOSE_CAUSES = ['socket_limit', 'global_budget'] as const;
export type SlowCloseCause = (typeof SLOW_CLOSE_CAUSES)[number];

export type Metrics = ReturnType<typeof createMetrics>;
