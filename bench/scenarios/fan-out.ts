/*
 * fan-out: deliveries per second from one burst of N rows to N clients watching one election,
 * the hub and a bare uWS server (publishing frames of the hub's size) taking turns; with
 * `peers`, one burst each through the ws and socket.io hubs.
 */
import {
  type Bench,
  type Connected,
  LABEL,
  SEED,
  type Scenario,
  type Server,
  dashboardsOf,
  status,
} from '../harness.ts';
import { sleep } from '../lib/clock.ts';
import { type Summary, si, summarize } from '../lib/stats.ts';
import type { TargetKind } from '../workers/clients.ts';

type Sizes = {
  fanout: Array<{ clients: number; events: number }>;
  /** Timed bursts per server (hub and bare uWS); the median is reported. */
  fanoutReps: number;
};

const SIZES = {
  smoke: { fanout: [{ clients: 20, events: 100 }], fanoutReps: 1 },
  quick: { fanout: [{ clients: 1000, events: 1000 }], fanoutReps: 3 },
  full: {
    fanout: [
      { clients: 1000, events: 2000 },
      { clients: 10_000, events: 500 },
    ],
    fanoutReps: 5,
  },
} satisfies Record<string, Sizes>;

type Burst = {
  rate: number;
  delivered: number;
  expected: number;
  seconds: number;
  frameBytes: number;
  latency: Summary;
  complete: boolean;
};
type FanoutResult = {
  bursts: Burst[];
  rate: number;
  delivered: number;
  expected: number;
  frameBytes: number;
  open: number;
  droppedAtOpen: number;
  connect: Connected;
};

/** A server with `n` clients connected, warmed up, ready for timed bursts. */
type Rig = {
  kind: TargetKind;
  server: Server;
  open: number;
  droppedAtOpen: number;
  connect: Connected;
  burst(events: number, frameBytes: number): Promise<Burst>;
};

async function rig(
  bench: Bench,
  server: Server,
  n: number,
  stallMs = Math.max(bench.sizes.stallMs, 5000),
): Promise<Rig> {
  const openBefore = await bench.openNow(); // another rig may hold connections on the same workers
  const connect = await bench.connectAll(server.target, n, dashboardsOf(1), 0);
  const { open, droppedAtOpen } = await bench.settle(connect, openBefore);
  const fire = async (count: number, frameBytes: number) => {
    if (server.kind === 'bare') await server.publish(count, frameBytes);
    else
      await bench.writer.call('bulk', {
        url: bench.url,
        total: count,
        batch: count,
        election: 1,
        firstCommittee: 1,
        committees: SEED.committeesPer,
      });
  };
  const r: Rig = {
    kind: server.kind,
    server,
    open,
    droppedAtOpen,
    connect,
    /** One burst of `events`, timed at the clients from first to last delivery. */
    async burst(events, frameBytes) {
      await bench.resetAll(100);
      await fire(events, frameBytes);
      const done = await bench.waitDelivered(open * events, stallMs);
      const s = await bench.statsAll({ latencies: true, groups: false });
      await sleep(300); // the hub's dashboard_update (DASHBOARD_DEBOUNCE, 250 ms) goes out before the next burst
      const seconds = (s.last - s.first) / 1000;
      return {
        rate: s.events / seconds,
        delivered: s.events,
        expected: open * events,
        seconds,
        frameBytes: s.bytes / Math.max(1, s.events),
        latency: summarize(s.latencies),
        complete: done.complete,
      };
    },
  };
  await r.burst(Math.max(20, Math.min(200, Math.round(200_000 / n))), 300); // warm-up: JIT, buffers, plans
  return r;
}

const resultOf = (r: Rig, bursts: Burst[]): FanoutResult => {
  const mid = [...bursts].sort((a, b) => a.rate - b.rate)[Math.floor(bursts.length / 2)] as Burst;
  return {
    bursts,
    rate: mid.rate,
    delivered: bursts.reduce((n, b) => n + b.delivered, 0),
    expected: bursts.reduce((n, b) => n + b.expected, 0),
    frameBytes: mid.frameBytes,
    open: r.open,
    droppedAtOpen: r.droppedAtOpen,
    connect: r.connect,
  };
};

async function run(bench: Bench, sizes: Sizes): Promise<void> {
  const { log } = bench;
  const includePeers = bench.wants('peers');
  const includeBase = bench.wants('fan-out');
  for (const { clients: n, events } of sizes.fanout) {
    const label = `${n.toLocaleString('en')} clients × ${events.toLocaleString('en')} events`;
    log(`fan-out: ${label}, ${sizes.fanoutReps} bursts each${includeBase ? ', hub and bare uWS interleaved' : ''}`);
    const results: Partial<Record<TargetKind, FanoutResult>> = {};
    // The hub and bare uWS hold their clients side by side and take turns: drift on this
    // shared machine hits both alike. The median burst of each is reported.
    await bench.withServer('hub', async (hubServer) => {
      const hubRig = await rig(bench, hubServer, n);
      const hubBursts: Burst[] = [];
      const bareBursts: Burst[] = [];
      const bareServer = includeBase ? await bench.startServer('bare') : undefined;
      try {
        const bareRig = bareServer ? await rig(bench, bareServer, n) : undefined;
        for (let i = 0; i < sizes.fanoutReps; i++) {
          const h = await hubRig.burst(events, 0);
          hubBursts.push(h);
          log(
            `  hub ${si(h.rate)} deliveries/s (${si(h.delivered)} of ${si(h.expected)}, ${h.frameBytes.toFixed(0)} B frames, ${h.seconds.toFixed(2)} s)`,
          );
          if (!bareRig) continue;
          const b = await bareRig.burst(events, Math.round(h.frameBytes));
          bareBursts.push(b);
          log(
            `  bare uWS ${si(b.rate)} deliveries/s (${si(b.delivered)} of ${si(b.expected)}, ${b.seconds.toFixed(2)} s)`,
          );
        }
        results.hub = resultOf(hubRig, hubBursts);
        if (bareRig) results.bare = resultOf(bareRig, bareBursts);
      } finally {
        await bench.closeAll();
        await bareServer?.stop();
      }
    });
    const hub = results.hub;
    if (!hub) continue;
    if (includePeers) {
      for (const kind of ['ws', 'sio'] as const) {
        results[kind] = await bench.withServer(kind, async (server) => {
          // socket.io emits a whole page to every socket before its event loop lets engine.io
          // write the next packet: deliveries pause for many seconds at 10 000 clients.
          const r = await rig(bench, server, n, 60_000);
          const b = await r.burst(events, 0);
          log(
            `  ${LABEL[kind]} ${si(b.rate)} deliveries/s (${si(b.delivered)} of ${si(b.expected)}, ${b.seconds.toFixed(2)} s)`,
          );
          return resultOf(r, [b]);
        });
      }
    }
    bench.raw(`fan-out ${n}`, results);
    const lost = (r: FanoutResult) => (r.delivered < r.expected ? ` (${si(r.expected - r.delivered)} lost)` : '');
    const bare = results.bare;
    if (bare) {
      const ratio = hub.rate / bare.rate;
      bench.row({
        scenario: 'fan-out',
        case: label,
        figure: `${si(hub.rate)} deliveries/s${lost(hub)}`,
        value: hub.rate,
        baseline: `bare uWS ${si(bare.rate)}/s${lost(bare)}`,
        baselineValue: bare.rate,
        ratio,
        ratioText: `${ratio.toFixed(2)}×`,
        target: '≥ 0.8× bare uWS',
        status: status(ratio >= 0.8 && hub.delivered === hub.expected),
      });
    }
    for (const [kind, target] of [
      ['ws', 3],
      ['sio', 8],
    ] as const) {
      const peer = results[kind];
      if (!peer) continue;
      const ratio = hub.rate / peer.rate;
      bench.row({
        scenario: 'peers',
        case: `fan-out ${n.toLocaleString('en')}: hub vs ${LABEL[kind]}`,
        figure: `hub ${si(hub.rate)}/s`,
        value: hub.rate,
        baseline: `${LABEL[kind]} ${si(peer.rate)}/s${lost(peer)}`,
        baselineValue: peer.rate,
        ratio,
        ratioText: `${ratio.toFixed(1)}×`,
        target: `≥ ${target}× ${LABEL[kind]}`,
        status: status(ratio >= target),
      });
    }
  }
}

export const fanOut: Scenario<Sizes> = {
  name: 'fan-out',
  reports: ['fan-out', 'peers'],
  sizes: (mode) => SIZES[mode],
  run,
};
