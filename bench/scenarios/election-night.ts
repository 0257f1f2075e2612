/*
 * election-night (full mode only): 20 elections × 50 committees, committee and election
 * dashboards (20 000 asked, capped by the open-file limit), 500 writes/s spread over the
 * committees for 5 minutes; every delivery is counted per dashboard group, none may be lost.
 */
import { type Bench, SEED, type Scenario, capNote, capacityOf, pct, status } from '../harness.ts';
import { committeeId } from '../lib/db.ts';
import { si, summarize } from '../lib/stats.ts';
import type { Dashboard } from '../workers/clients.ts';
import type { PacedResult, Spot } from '../workers/writer.ts';

type Sizes = {
  electionNight: {
    elections: number;
    committeesPer: number;
    committeeDashboards: number;
    electionDashboards: number;
    rate: number;
    seconds: number;
  };
};

const SIZES: Record<'smoke' | 'quick' | 'full', Sizes | undefined> = {
  smoke: undefined,
  quick: undefined,
  full: {
    electionNight: {
      elections: 20,
      committeesPer: 50,
      committeeDashboards: 19,
      electionDashboards: 50,
      rate: 500,
      seconds: 300,
    },
  },
};

async function run(bench: Bench, { electionNight: en }: Sizes): Promise<void> {
  const { log } = bench;
  const spots: Spot[] = [];
  for (let e = 1; e <= en.elections; e++)
    for (let k = 1; k <= en.committeesPer; k++)
      spots.push({ election: e, committee: committeeId(e, k, SEED.committeesPer) });
  const build = (perCommittee: number): Dashboard[] => {
    const list: Dashboard[] = [];
    for (const { committee } of spots)
      for (let d = 0; d < perCommittee; d++) list.push({ committees: [committee], group: `c${committee}` });
    for (let e = 1; e <= en.elections; e++)
      for (let d = 0; d < en.electionDashboards; d++) list.push({ elections: [e], group: `e${e}` });
    return list;
  };
  // Spread writes over committees in a shuffled but fixed order.
  for (let i = spots.length - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1);
    [spots[i], spots[j]] = [spots[j] as Spot, spots[i] as Spot];
  }
  const asked = build(en.committeeDashboards).length;
  log(`election night: ${asked.toLocaleString('en')} dashboards, ${en.rate} writes/s for ${en.seconds} s`);
  let capped = '';
  let n = asked;
  const result = await bench.withServer('hub', async (server) => {
    let perCommittee = en.committeeDashboards;
    while (perCommittee > 0 && build(perCommittee).length > capacityOf(server)) perCommittee--;
    if (perCommittee < en.committeeDashboards) {
      capped = capNote(server);
      bench.noteFdCapped();
      log(
        `  ${asked.toLocaleString('en')} do not fit: ${perCommittee} dashboards per committee instead of ${en.committeeDashboards} (${capped})`,
      );
    }
    const dashboards = build(perCommittee);
    n = dashboards.length;
    const connect = await bench.connectAll(server.target, n, dashboards, 20, 64);
    const { droppedAtOpen } = await bench.settle(connect);
    log(
      `  connected ${connect.opened} in ${connect.seconds.toFixed(1)} s${droppedAtOpen > 0 ? `, ${droppedAtOpen} dropped at open (left out)` : ''}`,
    );
    await bench.resetAll(20);
    const writing = bench.writer.call('paced', {
      url: bench.url,
      rate: en.rate,
      seconds: en.seconds,
      connections: 4,
      kind: 'insert',
      spots,
    });
    const poll = setInterval(() => {
      void bench.statsAll({ latencies: false, groups: false }).then(
        (s) => log(`  … ${si(s.events)} deliveries, ${s.open} open, ${s.closed} closed`),
        () => undefined,
      );
    }, 30_000);
    let sent: PacedResult;
    try {
      sent = await writing;
    } finally {
      clearInterval(poll);
    }
    const expectedOf = (group: string) =>
      group.startsWith('c') ? (sent.perCommittee[group.slice(1)] ?? 0) : (sent.perElection[group.slice(1)] ?? 0);
    const live = await bench.statsAll({ latencies: false, groups: true });
    let expected = 0;
    for (const [g, st] of Object.entries(live.groups)) expected += expectedOf(g) * st.conns;
    await bench.waitDelivered(expected, 10_000);
    const s = await bench.statsAll({ latencies: true, groups: true });
    let lost = 0;
    let short = 0;
    for (const [g, st] of Object.entries(s.groups)) {
      const want = expectedOf(g);
      lost += want * st.conns - st.total;
      if (st.min < want) short += 1;
    }
    return {
      dashboards: n,
      perCommittee,
      connect,
      droppedAtOpen,
      sent,
      expected,
      delivered: s.events,
      lost,
      groupsShort: short,
      closed: s.closed,
      closeCodes: s.closeCodes,
      latency: summarize(s.latencies),
    };
  });
  bench.raw('election-night', { ...result, ...(capped ? { capped } : {}) });
  log(`  ${pct(result.latency)}; ${si(result.delivered)} of ${si(result.expected)} delivered, ${result.closed} closed`);
  const ratio = result.delivered / Math.max(1, result.expected);
  bench.row({
    scenario: 'election-night',
    case: `${n.toLocaleString('en')} dashboards, ${en.rate} writes/s, ${en.seconds / 60} min${capped ? ` — asked ${asked.toLocaleString('en')}, ${capped}` : ''}`,
    figure: `${pct(result.latency)}, ${result.lost} lost`,
    value: result.latency.p99,
    baseline: `${si(result.expected)} deliveries expected`,
    baselineValue: result.expected,
    ratio,
    ratioText: `${ratio.toFixed(4)} delivered`,
    target: 'zero loss (p99 reported)',
    status: status(result.lost === 0 && result.closed === 0),
  });
}

export const electionNight: Scenario<Sizes> = { name: 'election-night', sizes: (mode) => SIZES[mode], run };
