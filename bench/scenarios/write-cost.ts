/*
 * write-cost: what capture costs the application's writes. Single-row inserts from 4 writers
 * with the capture triggers on, with capture minus its NOTIFY (diagnosis), and off; one large
 * INSERT … SELECT each way. Runs last: its hundreds of thousands of rows would otherwise sit in
 * every later scenario's tables.
 */
import { type Bench, SEED, type Scenario, status } from '../harness.ts';
import { committeeId } from '../lib/db.ts';
import { median, ms, si } from '../lib/stats.ts';

type Sizes = { write: { seconds: number; rounds: number; statementRows: number; statementRounds: number } };

const SIZES = {
  smoke: { write: { seconds: 1, rounds: 1, statementRows: 2000, statementRounds: 1 } },
  quick: { write: { seconds: 2, rounds: 2, statementRows: 20_000, statementRounds: 3 } },
  full: { write: { seconds: 5, rounds: 2, statementRows: 20_000, statementRounds: 3 } },
} satisfies Record<string, Sizes>;

/**
 * A copy of the hub's capture function without its pg_notify, installed (disabled) beside
 * the real triggers in the bench database only: it tells the cost of the outbox INSERT from
 * the cost of NOTIFY. False (and nothing installed) if the function no longer has that line.
 */
async function installQuietCapture(bench: Bench, url: string): Promise<boolean> {
  const { writer } = bench;
  const def = await writer.call('sql', { url, text: `SELECT pg_get_functiondef('hub.capture'::regproc) AS d` });
  const text = String((def.rows[0] as { d?: string } | undefined)?.d ?? '');
  const quiet = text
    .replace(/PERFORM\s+pg_notify\([^;]*\);/, 'NULL;')
    .replace(/FUNCTION\s+hub\.capture\(\)/, 'FUNCTION public.bench_capture_quiet()');
  if (quiet === text || !quiet.includes('bench_capture_quiet')) return false;
  const args = await writer.call('sql', {
    url,
    text: `SELECT pg_get_triggerdef(oid) AS d FROM pg_trigger WHERE tgrelid = 'guarantees'::regclass AND tgname = 'hub_capture_insert'`,
  });
  const trig = String((args.rows[0] as { d?: string } | undefined)?.d ?? '');
  const quietTrigger = trig
    .replace('hub_capture_insert', 'bench_quiet_insert')
    .replace(/hub\.capture\(/, 'public.bench_capture_quiet(');
  if (!quietTrigger.includes('bench_capture_quiet')) return false;
  await writer.call('sql', { url, text: quiet });
  await writer.call('sql', { url, text: `${quietTrigger}; ALTER TABLE guarantees DISABLE TRIGGER bench_quiet_insert` });
  return true;
}

async function run(bench: Bench, { write: w }: Sizes): Promise<void> {
  const { log, writer } = bench;
  const url = bench.url;
  // Rows go to election 20, which no scenario's dashboards watch.
  const where = {
    election: SEED.elections,
    firstCommittee: committeeId(SEED.elections, 1, SEED.committeesPer),
    committees: SEED.committeesPer,
  };
  // NOTIFY does its real work only with a listener: one LISTENs on the hub's channel.
  const first = bench.firstClient;
  await first.call('listen', { url, channel: 'hub_outbox' });
  const quietOk = await installQuietCapture(bench, url);
  type State = 'on' | 'quiet' | 'off';
  const capture = async (state: State) => {
    const text =
      state === 'on'
        ? 'ALTER TABLE guarantees ENABLE TRIGGER USER' +
          (quietOk ? '; ALTER TABLE guarantees DISABLE TRIGGER bench_quiet_insert' : '')
        : 'ALTER TABLE guarantees DISABLE TRIGGER USER' +
          (state === 'quiet' ? '; ALTER TABLE guarantees ENABLE TRIGGER bench_quiet_insert' : '');
    await writer.call('sql', { url, text });
  };
  const states: State[] = quietOk ? ['on', 'quiet', 'off'] : ['on', 'off'];
  const single: Record<State, { inserts: number; seconds: number }> = {
    on: { inserts: 0, seconds: 0 },
    quiet: { inserts: 0, seconds: 0 },
    off: { inserts: 0, seconds: 0 },
  };
  const statement: { on: number[]; off: number[] } = { on: [], off: [] };
  try {
    log(`write cost: single-row inserts, 4 writers, ${w.rounds}× ${w.seconds} s per state (${states.join(', ')})`);
    await capture('on');
    await writer.call('flatOut', { url, writers: 4, seconds: 0.5, ...where }); // warm-up
    for (let r = 0; r < w.rounds; r++) {
      for (const state of states) {
        await capture(state);
        const res = await writer.call('flatOut', { url, writers: 4, seconds: w.seconds, ...where });
        single[state].inserts += res.inserts;
        single[state].seconds += res.seconds;
      }
    }
    log(`write cost: ${w.statementRows.toLocaleString('en')}-row statement, ${w.statementRounds}× each way`);
    for (let r = 0; r < w.statementRounds; r++) {
      for (const state of ['on', 'off'] as const) {
        await capture(state);
        const res = await writer.call('statement', { url, rows: w.statementRows, ...where });
        statement[state].push(res.ms);
      }
    }
  } finally {
    await capture('on');
    await first.call('unlisten', undefined);
  }
  const rate = (s: State) => single[s].inserts / single[s].seconds;
  const onRate = rate('on');
  const offRate = rate('off');
  log(
    `  single-row: on ${si(onRate)}/s, ${quietOk ? `without NOTIFY ${si(rate('quiet'))}/s, ` : ''}off ${si(offRate)}/s; ` +
      `statement: on ${ms(median(statement.on))} ms, off ${ms(median(statement.off))} ms`,
  );
  bench.raw('write-cost', { single, statement, onRate, offRate, ...(quietOk ? { quietRate: rate('quiet') } : {}) });
  bench.row({
    scenario: 'write-cost',
    case: 'single-row inserts, 4 writers',
    figure: `capture on ${si(onRate)} inserts/s`,
    value: onRate,
    baseline: `capture off ${si(offRate)}/s`,
    baselineValue: offRate,
    ratio: onRate / offRate,
    ratioText: `${(onRate / offRate).toFixed(2)}×`,
    target: '≥ 0.8× capture off',
    status: status(onRate / offRate >= 0.8),
  });
  if (quietOk) {
    const q = rate('quiet');
    bench.row({
      scenario: 'write-cost',
      case: 'single-row, capture minus its NOTIFY (diagnosis)',
      figure: `outbox only ${si(q)} inserts/s`,
      value: q,
      baseline: `capture off ${si(offRate)}/s`,
      baselineValue: offRate,
      ratio: q / offRate,
      ratioText: `${(q / offRate).toFixed(2)}×`,
      target: '—',
      status: 'info',
    });
  }
  const on = median(statement.on);
  const off = median(statement.off);
  bench.row({
    scenario: 'write-cost',
    case: `one ${w.statementRows.toLocaleString('en')}-row INSERT … SELECT`,
    figure: `capture on ${ms(on)} ms`,
    value: on,
    baseline: `capture off ${ms(off)} ms`,
    baselineValue: off,
    ratio: off / on,
    ratioText: `${(off / on).toFixed(2)}× speed`,
    target: '—',
    status: 'info',
  });
}

export const writeCost: Scenario<Sizes> = { name: 'write-cost', sizes: (mode) => SIZES[mode], run };
