/*
 * held-open: delivery while a write transaction stays open elsewhere (issue 14: "with a write
 * transaction held open 10 s in another database, rows written meanwhile arrive within 1 s").
 * A hub process and one election-1 dashboard; the writer inserts one probe row every 100 ms
 * (each stamped with its send time, as in the latency scenario) first with nothing held (the
 * baseline), then while a transaction that has written holds open for `holdSeconds` (10 s in
 * quick and full mode, 2 s in smoke) in another database of the same cluster — and, in full
 * mode, in this database after writing a watched table (its row goes to an election the
 * dashboard does not watch). The last probe is written 0.5 s before the transaction ends;
 * deliveries are counted just before it commits, and the late ones after.
 */
import { type Bench, SEED, type Scenario, dashboardsOf, e1Spots, status } from '../harness.ts';
import { sleep, wallNow } from '../lib/clock.ts';
import { committeeId } from '../lib/db.ts';
import {
  HELD_LABEL,
  HELD_TARGET_MS,
  type HeldResult,
  type HeldWhere,
  describeHeld,
  heldResult,
  holdOpen,
} from '../lib/held.ts';
import { ms, summarize } from '../lib/stats.ts';

type Sizes = {
  held: { holdSeconds: number; baselineSeconds: number; intervalMs: number; where: HeldWhere[] };
};

const SIZES = {
  smoke: { held: { holdSeconds: 2, baselineSeconds: 1, intervalMs: 100, where: ['another database'] } },
  quick: { held: { holdSeconds: 10, baselineSeconds: 3, intervalMs: 100, where: ['another database'] } },
  full: {
    held: { holdSeconds: 10, baselineSeconds: 5, intervalMs: 100, where: ['another database', 'this database'] },
  },
} satisfies Record<string, Sizes>;

async function run(bench: Bench, { held: size }: Sizes): Promise<void> {
  const { log, writer } = bench;
  const probe = (seconds: number) =>
    writer.call('paced', {
      url: bench.url,
      rate: 1000 / size.intervalMs,
      seconds,
      connections: 1,
      kind: 'insert',
      spots: [...e1Spots],
    });
  const other = await bench.otherDatabase();
  try {
    await bench.withServer('hub', async (server) => {
      const connect = await bench.connectAll(server.target, 1, dashboardsOf(1), 1);
      const { open } = await bench.settle(connect);
      if (open < 1) throw new Error('held-open: the dashboard connection did not stay open');
      await probe(0.5); // warm-up
      await sleep(300);

      log(`held open: baseline, one row every ${size.intervalMs} ms for ${size.baselineSeconds} s, nothing held`);
      await bench.resetAll(1);
      const b = await probe(size.baselineSeconds);
      await bench.waitDelivered(b.sent, bench.sizes.stallMs);
      const base = summarize((await bench.statsAll({ latencies: true, groups: false })).latencies);

      const results: Partial<Record<HeldWhere, HeldResult>> = {};
      for (const where of size.where) {
        log(`held open: ${HELD_LABEL[where]}, ${size.holdSeconds} s`);
        await bench.resetAll(1);
        const holdMs = size.holdSeconds * 1000;
        // Its own row (this database) goes to an election the dashboard does not watch.
        const holder = await holdOpen(where, where === 'another database' ? other.url : bench.url, {
          election: SEED.elections,
          committee: committeeId(SEED.elections, 1, SEED.committeesPer),
        });
        const held = async () => {
          try {
            const t0 = wallNow();
            const { sent } = await probe(size.holdSeconds - 0.5);
            await sleep(Math.max(0, t0 + holdMs - wallNow()));
            return { sent, whileHeld: (await bench.statsAll({ latencies: true, groups: false })).latencies };
          } finally {
            await holder.commit();
          }
        };
        const { sent, whileHeld } = await held();
        await bench.waitDelivered(sent, bench.sizes.stallMs);
        const after = (await bench.statsAll({ latencies: true, groups: false })).latencies;
        const r = heldResult(holdMs, sent, whileHeld, after);
        log(`  ${describeHeld(where, r)}`);
        results[where] = r;
        const target = where === 'another database';
        const ratio = (r.p50Ms ?? Number.NaN) / base.p50;
        const lost = r.rows - r.deliveredWhileHeld - r.arrivedAfter;
        bench.row({
          scenario: 'held-open',
          case: `rows every ${size.intervalMs} ms while ${HELD_LABEL[where]} stays open ${size.holdSeconds} s`,
          figure:
            `${r.deliveredWhileHeld} of ${r.rows} delivered while open` +
            `${r.arrivedAfter > 0 ? `, ${r.arrivedAfter} after` : ''}${lost > 0 ? `, ${lost} lost` : ''}; ` +
            `p50 ${ms(r.p50Ms ?? Number.NaN)} ms, max ${ms(r.maxMs ?? Number.NaN)} ms`,
          value: r.maxMs ?? Number.NaN,
          baseline: `nothing held: p50 ${ms(base.p50)} ms, max ${ms(base.max)} ms`,
          baselineValue: base.p50,
          ratio,
          ratioText: `${ratio.toFixed(1)}× p50`,
          target: target ? `all while open, max ≤ ${HELD_TARGET_MS / 1000} s` : '—',
          status: target ? status(r.withinTarget) : 'info',
        });
      }
      bench.raw('held-open', { baseline: base, results });
    });
  } finally {
    await other.drop();
  }
}

export const heldOpen: Scenario<Sizes> = { name: 'held-open', sizes: (mode) => SIZES[mode], run };
