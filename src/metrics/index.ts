import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
  const metrics = {
    registry,
    connections: new Gauge({ name: 'hub_connections', help: 'Open WebSocket connections on this node', registers: r }),
    connectionsByRole: new Gauge({ name: 'hub_connections_by_role', help: 'Open WebSocket connections by token role', labelNames: ['role'], registers: r }),
    connectionsOpened: new Counter({ name: 'hub_connections_opened_total', help: 'WebSocket connections opened', registers: r }),
    connectionsClosed: new Counter({ name: 'hub_connections_closed_total', help: 'WebSocket connections closed, by close code', labelNames: ['code'], registers: r }),
    events: new Counter({ name: 'hub_events_total', help: 'Outbox events read and published', labelNames: ['kind', 'action'], registers: r }),
    messagesSent: new Counter({ name: 'hub_messages_sent_total', help: 'Frames delivered to sockets, by frame type', labelNames: ['type'], registers: r }),
    deliveryLag: new Histogram({
      name: 'hub_event_delivery_lag_seconds',
      help: 'Time from the change being captured in PostgreSQL to its publication to sockets',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    authFailures: new Counter({ name: 'hub_auth_failures_total', help: 'Refused authentications, by reason', labelNames: ['reason'], registers: r }),
    listenerConnected: new Gauge({ name: 'hub_listener_connected', help: '1 while the database listener is connected', registers: r }),
    cacheRequests: new Counter({ name: 'hub_dashboard_cache_requests_total', help: 'Dashboard snapshot cache lookups', labelNames: ['result'], registers: r }),
    dashboardComputations: new Counter({ name: 'hub_dashboard_computations_total', help: 'Dashboard snapshots computed from PostgreSQL', registers: r }),
    slowReaderCloses: new Counter({
      name: 'hub_slow_reader_closes_total',
      help: 'Sockets closed with 4008 for falling behind: over MAX_BACKPRESSURE_BYTES (socket_limit) or the most buffered while all sockets passed MAX_TOTAL_BUFFERED_BYTES (global_budget)',
      labelNames: ['cause'],
      registers: r,
    }),
    replayBufferBytes: new Gauge({ name: 'hub_replay_buffer_bytes', help: 'Bytes of the frames held in the replay ring (REPLAY_BUFFER_BYTES caps it)', registers: r }),
    replayBufferEvents: new Gauge({ name: 'hub_replay_buffer_events', help: 'Events held in the replay ring (REPLAY_BUFFER_EVENTS caps it)', registers: r }),
    bufferedBytes: new Gauge({
      name: 'hub_socket_buffered_bytes',
      help: 'Bytes buffered for all sockets of this node at the last check (MAX_TOTAL_BUFFERED_BYTES caps it)',
      registers: r,
    }),
    outboxBacklog: new Gauge({ name: 'hub_outbox_backlog_events', help: 'Outbox rows committed but not yet read by this node (sampled, capped at 100000)', registers: r }),
    outboxOldestAge: new Gauge({ name: 'hub_outbox_oldest_pending_age_seconds', help: 'Age of the oldest outbox row not yet read by this node (sampled)', registers: r }),
    frameErrors: new Counter({ name: 'hub_client_errors_total', help: 'Client frames answered with an error, by code', labelNames: ['code'], registers: r }),
  };
  // Known label values exist at 0 from the start.
  for (const cause of SLOW_CLOSE_CAUSES) metrics.slowReaderCloses.inc({ cause }, 0);
  return metrics;
}

/** Why a socket was closed with 4008. */
export const SLOW_CLOSE_CAUSES = ['socket_limit', 'global_budget'] as const;
export type SlowCloseCause = (typeof SLOW_CLOSE_CAUSES)[number];

export type Metrics = ReturnType<typeof createMetrics>;
