/*
 * latency: commit→client time of single-row writes at an idle and a loaded rate, next to a bare
 * LISTEN/NOTIFY round trip measured the same way (and, with `peers`, the ws and socket.io hubs);
 * then, outside smoke mode, the same through a fresh hub once the database holds 100 000 more
 * keys (300 000 in full mode), as an election night keeps within the retention.
 */
import pg from 'pg';
import { type Bench, LABEL, type Scenario, dashboardsOf, e1Spots, pct, status } from '../harness.ts';
import { writeHistory } from '../lib/db.ts';
import type { Row } from '../lib/report.ts';
import { sleep } from '../lib/clock.ts';
import { type Summary, ms, summarize } from '../lib/stats.ts';
import type { TargetKind } from '../workers/clients.ts';
import type { PacedResult } from '../workers/writer.ts';

type Sizes = {
  latency: {
    clients: number;
    idleRate: number;
    loadRate: number;
    seconds: number;
    warmSeconds: number;
    readOnlyReference: boolean;
    /** Then again through a fresh hub once the database holds this many more keys (0: not measured). */
    historyKeys: number;
  };
};

const SIZES = {
  smoke: {
    latency: {
      clients: 4,
      idleRate: 50,
      loadRate: 500,
      seconds: 0.6,
      warmSeconds: 0.2,
      readOnlyReference: false,
      historyKeys: 0,
    },
  },
  quick: {
    latency: {
      clients: 20,
      idleRate: 50,
      loadRate: 500,
      seconds: 2.5,
      warmSeconds: 0.5,
      readOnlyReference: true,
      historyKeys: 100_000,
    },
  },
  full: {
    latency: {
      clients: 100,
      idleRate: 50,
      loadRate: 500,
      seconds: 10,
      warmSeconds: 1,
      readOnlyReference: true,
      historyKeys: 300_000,
    },
  },
} satisfies Record<string, Sizes>;

type Phase = { name: string; rate: number; connections: number };
type Measured = { summary: Summary; delivered: number; expected: number; sent: PacedResult; droppedAtOpen: number };

async function run(bench: Bench, { latency: size }: Sizes): Promise<void> {
  const { log, writer } = bench;
  const includePeers = bench.wants('peers');
  const { clients: n, idleRate, loadRate, seconds } = size;
  const phases: Phase[] = [
    { name: 'idle', rate: idleRate, connections: 1 },
    { name: 'load', rate: loadRate, connections: 4 },
  ];
  const paced = (p: Phase, kind: 'insert' | 'notify' | 'notify-only', secs = seconds) =>
    writer.call('paced', {
      url: bench.url,
      rate: p.rate,
      seconds: secs,
      connections: p.connections,
      kind,
      channel: 'bench_probe',
      spots: [...e1Spots],
    });

  // Baseline: a pg client commits a one-row write that NOTIFYs its send time, and another (in
  // a client worker) LISTENs: the same commit (WAL flush included) as the hub's probe rows,
  // minus the capture and the hub. A read-only `SELECT pg_notify` is measured for reference.
  log('latency: bare LISTEN/NOTIFY');
  const first = bench.firstClient;
  const notify: Record<string, { summary: Summary; sent: PacedResult }> = {};
  await first.call('listen', { url: bench.url, channel: 'bench_probe' });
  try {
    const variants: Array<[string, Phase, 'notify' | 'notify-only']> = [
      ...phases.map((p) => [p.name, p, 'notify'] as [string, Phase, 'notify']),
      ...(size.readOnlyReference
        ? [['idle, read-only NOTIFY', phases[0] as Phase, 'notify-only'] as [string, Phase, 'notify-only']]
        : []),
    ];
    for (const [name, p, kind] of variants) {
      await first.call('reset', { sampleEvery: 0 });
      const sent = await paced(p, kind);
      await sleep(200);
      const s = await first.call('stats', { latencies: true, groups: false });
      notify[name] = { summary: summarize(s.notifyLatencies), sent };
      log(`  NOTIFY ${name}: ${pct(summarize(s.notifyLatencies))} (${s.notifyLatencies.length} of ${sent.sent})`);
    }
  } finally {
    await first.call('unlisten', undefined);
  }

  /** The idle and loaded phases through one server: `n` clients, a warm-up, then each phase's paced writes. */
  const measureServer = async (kind: TargetKind, server: Parameters<Parameters<Bench['withServer']>[1]>[0]) => {
    const connect = await bench.connectAll(server.target, n, dashboardsOf(1), 1);
    const { open, droppedAtOpen } = await bench.settle(connect);
    if (droppedAtOpen > 0) log(`  ${droppedAtOpen} connection(s) dropped by the server right after opening (1006)`);
    // Warm-up: JIT, pools, prepared statements.
    await paced({ name: 'warm', rate: 50, connections: 1 }, 'insert', size.warmSeconds);
    await sleep(300);
    const out: Record<string, Measured> = {};
    for (const p of phases) {
      await bench.resetAll(1);
      const sent = await paced(p, 'insert');
      const done = await bench.waitDelivered(open * sent.sent, bench.sizes.stallMs);
      const s = await bench.statsAll({ latencies: true, groups: true });
      if (!done.complete)
        log(
          `  ${LABEL[kind]} ${p.name}: incomplete, per connection ${JSON.stringify(s.groups)}, ${s.open} open, closes ${JSON.stringify(s.closeCodes)}`,
        );
      out[p.name] = {
        summary: summarize(s.latencies),
        delivered: done.events,
        expected: open * sent.sent,
        sent,
        droppedAtOpen,
      };
      log(`  ${LABEL[kind]} ${p.name}: ${pct(summarize(s.latencies))} (${s.latencies.length} samples)`);
    }
    return out;
  };

  const measured: Partial<Record<TargetKind, Record<string, Measured>>> = {};
  const kinds: TargetKind[] = includePeers ? ['hub', 'ws', 'sio'] : ['hub'];
  for (const kind of kinds) {
    log(`latency: ${LABEL[kind]} (${n} clients)`);
    measured[kind] = await bench.withServer(kind, (server) => measureServer(kind, server));
  }

  // At size: an election night keeps hundreds of thousands of keys within the retention. The
  // same phases through a fresh hub once the database holds `historyKeys` more (written and
  // keyed while no hub runs, one transaction each; sql/013_reader_plans.sql).
  let atSize: Record<string, Measured> | undefined;
  if (size.historyKeys > 0) {
    const started = performance.now();
    const c = new pg.Client({ connectionString: bench.url });
    await c.connect();
    try {
      await writeHistory(c, size.historyKeys, e1Spots[0] ?? { election: 1, committee: 1 }, true);
    } finally {
      await c.end();
    }
    log(
      `latency: hub with ${size.historyKeys} more keys held (written in ${((performance.now() - started) / 1000).toFixed(1)} s)`,
    );
    atSize = await bench.withServer('hub', (server) => measureServer('hub', server));
  }
  bench.raw('latency', { clients: n, notify, measured, atSize, historyKeys: size.historyKeys });

  /** One report row: phase `p`'s p50 through a server against the bare NOTIFY of that phase. */
  const row = (p: Phase, m: Measured, r: { scenario: string; case: string; target: string; status: Row['status'] }) => {
    const base = notify[p.name]?.summary as Summary;
    const delta = m.summary.p50 - base.p50;
    const ratio = m.summary.p50 / base.p50;
    const lost = m.delivered < m.expected ? `, ${m.expected - m.delivered} lost` : '';
    bench.row({
      ...r,
      figure: `${pct(m.summary)}${lost}`,
      value: m.summary.p50,
      baseline: `NOTIFY ${pct(base)}`,
      baselineValue: base.p50,
      ratio,
      ratioText: `${ratio.toFixed(1)}× (${delta >= 0 ? '+' : ''}${ms(delta)} ms)`,
    });
  };
  const caseOf = (p: Phase) => (p.name === 'idle' ? `idle (${p.rate} writes/s)` : `under load (${p.rate} writes/s)`);
  const complete = (m: Measured) => m.delivered === m.expected;
  for (const p of phases) {
    const base = notify[p.name]?.summary;
    if (!base) continue;
    for (const kind of kinds) {
      const m = measured[kind]?.[p.name];
      if (!m) continue;
      if (kind === 'hub')
        row(p, m, {
          scenario: 'latency',
          case: `commit→client ${caseOf(p)}`,
          target: 'p50 ≤ NOTIFY p50 + 1 ms',
          status: status(m.summary.p50 - base.p50 <= 1 && complete(m)),
        });
      else row(p, m, { scenario: 'peers', case: `latency ${caseOf(p)}: ${LABEL[kind]}`, target: '—', status: 'info' });
    }
  }
  for (const p of phases) {
    const m = atSize?.[p.name];
    if (!notify[p.name] || !m) continue;
    row(p, m, {
      scenario: 'latency',
      case: `commit→client ${caseOf(p)}, ${size.historyKeys.toLocaleString('en-US')} more keys held`,
      target: '—',
      status: complete(m) ? 'info' : status(false),
    });
  }
}

export const latency: Scenario<Sizes> = {
  name: 'latency',
  reports: ['latency', 'peers'],
  sizes: (mode) => SIZES[mode],
  run,
};
