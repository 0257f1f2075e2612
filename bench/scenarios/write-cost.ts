/*
 * write-cost: what capture costs the application's writes (sql/005_capture.sql). Capture
 * NOTIFYs only while some hub reader has declared itself asleep, so a write pays one of two
 * prices: the capture alone (every reader busy, or no hub), or the capture plus a NOTIFY at
 * commit (a reader asleep: an idle hub). Measured apart: `on` with nobody asleep, `asleep` with
 * a standing declaration (hub.sleep with a long lease: every commit NOTIFYs, as every one did
 * before 005), `hub` with a real hub process reading the rows as they come (its readers go busy
 * and stop the NOTIFYs; on a 2-core machine the hub's own CPU comes out of the writers'),
 * `hubs` with `nodes` hub processes (3; the nodes of one cluster sharing Redis, each reading
 * every row),
 * and `off` (triggers disabled). `asleep`, `off`, `hub` and `hubs` again with every writer
 * session waiting `slowFlushUs` before its WAL flush (commit_delay), as on a disk with slower
 * flushes: there the NOTIFYs cap the writers below the rate that used to make a hub's readers
 * withdraw their declaration (issue 14's 3-node lock-in, reproduced on a quiet machine). Then one large INSERT … SELECT each way. Runs last: its hundreds of
 * thousands of rows would otherwise sit in every later scenario's tables.
 */
import { type Bench, SEED, type Scenario, type Server, cpuSeconds, status } from '../harness.ts';
import { wallNow } from '../lib/clock.ts';
import { committeeId, setTriggersSql } from '../lib/db.ts';
import { median, ms, si } from '../lib/stats.ts';

/**
 * Single-row states run with 4 writers; `writers` adds capture on/asleep/off at other counts;
 * `nodes` hub processes (one cluster) read in the `hubs` state; `slowFlushUs` (0: none) is the
 * commit_delay of the slow-flush states.
 */
type Sizes = {
  write: {
    seconds: number;
    rounds: number;
    statementRows: number;
    statementRounds: number;
    writers: number[];
    nodes: number;
    slowFlushUs: number;
  };
};

const SIZES = {
  smoke: {
    write: { seconds: 1, rounds: 1, statementRows: 2000, statementRounds: 1, writers: [], nodes: 2, slowFlushUs: 0 },
  },
  quick: {
    write: {
      seconds: 1,
      rounds: 4,
      statementRows: 20_000,
      statementRounds: 3,
      writers: [1, 8],
      nodes: 3,
      slowFlushUs: 1000,
    },
  },
  full: {
    write: {
      seconds: 2,
      rounds: 5,
      statementRows: 20_000,
      statementRounds: 5,
      writers: [1, 8],
      nodes: 3,
      slowFlushUs: 1000,
    },
  },
} satisfies Record<string, Sizes>;

type WriteState = 'on' | 'asleep' | 'hub' | 'hubs' | 'off';
const STANDING_SLEEPER = 'bench-standing-sleeper';

async function run(bench: Bench, { write: w }: Sizes): Promise<void> {
  const { log, writer } = bench;
  const url = bench.url;
  // Rows go to election 20, which no scenario's dashboards watch.
  const where = {
    election: SEED.elections,
    firstCommittee: committeeId(SEED.elections, 1, SEED.committeesPer),
    committees: SEED.committeesPer,
  };
  // NOTIFY does its real work only with a listener: one LISTENs on the hub's channel (and counts).
  const first = bench.firstClient;
  await first.call('listen', { url, channel: 'hub_outbox' });
  const sql = (text: string) => writer.call('sql', { url, text });
  const set = async (state: WriteState) => {
    // Capture on or off without hub_rewatch's help (see setTriggersSql), and checked: a silent
    // failure here would compare the capture with itself.
    const enabled = state === 'off' ? 'D' : 'O';
    await sql(setTriggersSql('guarantees', state !== 'off'));
    const { rows } = await sql(
      `SELECT tgname FROM pg_trigger WHERE tgrelid = 'guarantees'::regclass AND NOT tgisinternal AND tgenabled <> '${enabled}'`,
    );
    if (rows.length > 0) throw new Error(`write-cost: capture ${state}, but ${JSON.stringify(rows)} did not follow`);
    // Nobody asleep, or the standing sleeper (its own transaction: hub.sleep insists); a hub's
    // readers declare themselves as they go.
    const hub = state === 'hub' || state === 'hubs';
    if (!hub) await sql(`SELECT hub.awake(reader) FROM hub.sleepers`);
    if (state === 'asleep') await sql(`SELECT lapsed FROM hub.sleep('${STANDING_SLEEPER}', 600000)`);
    if (hub) await sql(`SELECT hub.awake('${STANDING_SLEEPER}')`);
  };
  type Tally = { inserts: number; seconds: number; cpuMs: number; notifies: number };
  const single = new Map<string, Tally>();
  /** The tally of a state: `on/4`, or `hubs/4/slow` with the slow flush. */
  const keyOf = (state: WriteState, writers: number, slow = false) => `${state}/${writers}${slow ? '/slow' : ''}`;
  const flat = async (state: WriteState, writers: number, slow = false) => {
    await set(state);
    await first.call('notifications', undefined);
    const commitDelayUs = slow ? w.slowFlushUs : 0;
    const r = await writer.call('flatOut', { url, writers, seconds: w.seconds, commitDelayUs, ...where });
    const notifies = (await first.call('notifications', undefined)).n;
    const key = keyOf(state, writers, slow);
    const t = single.get(key) ?? { inserts: 0, seconds: 0, cpuMs: 0, notifies: 0 };
    single.set(key, {
      inserts: t.inserts + r.inserts,
      seconds: t.seconds + r.seconds,
      cpuMs: t.cpuMs + (r.backendCpuMs ?? Number.NaN),
      notifies: t.notifies + notifies,
    });
  };
  type HubCpu = { seconds: number; processes: number; backends: number; processMs: number; backendMs: number };
  const hubCpu = new Map<string, HubCpu>();
  const statement: { on: number[]; off: number[] } = { on: [], off: [] };
  const main: WriteState[] = ['on', 'asleep', 'off'];
  try {
    log(
      `write cost: single-row inserts, 4 writers, ${w.rounds}× ${w.seconds} s per state (${main.join(', ')}), then with a hub`,
    );
    await set('on');
    await writer.call('flatOut', { url, writers: 4, seconds: 0.5, ...where }); // warm-up
    for (let r = 0; r < w.rounds; r++) for (const state of main) await flat(state, 4);
    if (w.slowFlushUs > 0) {
      log(`write cost: single-row inserts, 4 writers, a ${w.slowFlushUs} µs slower flush, ${w.rounds}× (asleep, off)`);
      for (let r = 0; r < w.rounds; r++) for (const state of ['asleep', 'off'] as const) await flat(state, 4, true);
    }
    // One hub for all its rounds, warmed up first: its readers' steady state, not their start.
    // Then the same with `nodes` hubs, each reading every row (as the nodes of one cluster do).
    // The CPU the hub processes and their PostgreSQL backends take meanwhile is recorded.
    // The warm-up starts with every reader declared asleep, as writes find an idle hub: whether
    // the readers then withdraw (and writers stop notifying) is what the steady state shows.
    // (The pauses between rounds are shorter than a reader's re-sleep window.)
    const readersAsleep = async () =>
      (
        (await sql(
          `SELECT count(*)::int AS n FROM hub.sleepers WHERE asleep_until > now() AND reader <> '${STANDING_SLEEPER}'`,
        )) as { rows: Array<{ n: number }> }
      ).rows[0]?.n ?? 0;
    const hubRounds = async (state: 'hub' | 'hubs', servers: Server[], slow = false) => {
      await set(state);
      const asleepBy = wallNow() + 10_000;
      while ((await readersAsleep()) < servers.length) {
        if (wallNow() > asleepBy) throw new Error(`write-cost: the ${state} readers did not declare themselves asleep`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const commitDelayUs = slow ? w.slowFlushUs : 0;
      await writer.call('flatOut', { url, writers: 4, seconds: 0.5, commitDelayUs, ...where });
      const { rows } = await sql(
        `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'election-hub%'`,
      );
      const processes = servers.map((s) => s.pid);
      const backends = (rows as Array<{ pid: number }>).map((r) => r.pid);
      const before = [cpuMsOf(processes), cpuMsOf(backends)] as const;
      const t0 = wallNow();
      for (let r = 0; r < w.rounds; r++) await flat(state, 4, slow);
      const seconds = (wallNow() - t0) / 1000;
      hubCpu.set(keyOf(state, 4, slow), {
        seconds,
        processes: processes.length,
        backends: backends.length,
        processMs: cpuMsSince(before[0]),
        backendMs: cpuMsSince(before[1]),
      });
    };
    const slowToo = async (state: 'hub' | 'hubs', servers: Server[]) => {
      await hubRounds(state, servers);
      if (w.slowFlushUs > 0) await hubRounds(state, servers, true);
    };
    await bench.withServer('hub', (s) => slowToo('hub', [s]));
    log(`write cost: single-row inserts, 4 writers, ${w.nodes} hub nodes reading, ${w.rounds}× ${w.seconds} s`);
    await bench.withHubs(w.nodes, (hubs) => slowToo('hubs', hubs));
    for (const n of w.writers) {
      log(
        `write cost: single-row inserts, ${n} writer${n === 1 ? '' : 's'}, ${w.rounds}× ${w.seconds} s per state (on, asleep, off)`,
      );
      for (let r = 0; r < w.rounds; r++) for (const state of ['on', 'asleep', 'off'] as const) await flat(state, n);
    }
    log(`write cost: ${w.statementRows.toLocaleString('en')}-row statement, ${w.statementRounds}× each way`);
    for (let r = 0; r < w.statementRounds; r++) {
      for (const state of ['on', 'off'] as const) {
        await set(state);
        const res = await writer.call('statement', { url, rows: w.statementRows, ...where });
        statement[state].push(res.ms);
      }
    }
  } finally {
    await set('on');
    await first.call('unlisten', undefined);
  }
  const rate = (state: WriteState, n: number, slow = false) => {
    const t = single.get(keyOf(state, n, slow));
    return t ? t.inserts / t.seconds : Number.NaN;
  };
  /** CPU of the writers' backends per insert, in µs (NaN when PostgreSQL runs elsewhere). */
  const cpuUs = (state: WriteState, n: number, slow = false) => {
    const t = single.get(keyOf(state, n, slow));
    return t ? (t.cpuMs * 1000) / t.inserts : Number.NaN;
  };
  const notifyShare = (state: WriteState, n: number, slow = false) => {
    const t = single.get(keyOf(state, n, slow));
    return t ? t.notifies / t.inserts : Number.NaN;
  };
  const on = median(statement.on);
  const off = median(statement.off);
  log(
    `  single-row, 4 writers: on ${si(rate('on', 4))}/s, a reader asleep ${si(rate('asleep', 4))}/s, ` +
      `with a hub ${si(rate('hub', 4))}/s, with ${w.nodes} hubs ${si(rate('hubs', 4))}/s, off ${si(rate('off', 4))}/s; statement: on ${ms(on)} ms, off ${ms(off)} ms`,
  );
  bench.raw('write-cost', {
    single: Object.fromEntries(single),
    statement,
    rates: Object.fromEntries([...single].map(([k, t]) => [k, t.inserts / t.seconds])),
    backendCpuUsPerInsert: Object.fromEntries([...single].map(([k, t]) => [k, (t.cpuMs * 1000) / t.inserts])),
    notifiesPerInsert: Object.fromEntries([...single].map(([k, t]) => [k, t.notifies / t.inserts])),
    hubCpu: Object.fromEntries(hubCpu),
  });
  const ratioRow = (n: number, state: WriteState, label: string, target?: number, slow = false) => {
    const value = rate(state, n, slow);
    const base = rate('off', n, slow);
    if (!Number.isFinite(value) || !Number.isFinite(base)) return;
    const cpu = Math.round(cpuUs(state, n, slow) - cpuUs('off', n, slow));
    const h = state === 'hub' || state === 'hubs' ? hubCpu.get(keyOf(state, n, slow)) : undefined;
    const share = (cpuMs: number) => `${((100 * cpuMs) / 1000 / (h?.seconds ?? Number.NaN)).toFixed(0)}%`;
    const extra = [
      Number.isFinite(cpu) ? `${cpu >= 0 ? '+' : '−'}${Math.abs(cpu)} µs backend CPU/insert` : '',
      `${(100 * notifyShare(state, n, slow)).toFixed(0)}% of commits NOTIFY`,
      h
        ? `hub${h.processes > 1 ? 's' : ''} ${share(h.processMs)} + their backends ${share(h.backendMs)} of a core`
        : '',
    ].filter(Boolean);
    bench.row({
      scenario: 'write-cost',
      case: `single-row inserts, ${n} writer${n === 1 ? '' : 's'}${label}`,
      figure: `capture on ${si(value)} inserts/s (${extra.join(', ')})`,
      value,
      baseline: `capture off ${si(base)}/s`,
      baselineValue: base,
      ratio: value / base,
      ratioText: `${(value / base).toFixed(2)}×`,
      target: target ? `≥ ${target}× capture off` : '—',
      status: target ? status(value / base >= target) : 'info',
    });
  };
  ratioRow(4, 'on', ' (no reader asleep: no NOTIFY)', 0.7);
  ratioRow(4, 'asleep', ', a reader asleep (every commit NOTIFYs)');
  ratioRow(4, 'hub', ', a hub reading them (same machine)');
  ratioRow(4, 'hubs', `, ${w.nodes} hub nodes reading them (same machine)`);
  if (w.slowFlushUs > 0) {
    const slow = `, ${w.slowFlushUs} µs slower flush`;
    ratioRow(4, 'asleep', `${slow}, a reader asleep`, undefined, true);
    ratioRow(4, 'hub', `${slow}, a hub reading them`, undefined, true);
    ratioRow(4, 'hubs', `${slow}, ${w.nodes} hub nodes reading them`, undefined, true);
  }
  for (const n of w.writers) {
    ratioRow(n, 'on', ' (no reader asleep)');
    ratioRow(n, 'asleep', ', a reader asleep');
  }
  bench.row({
    scenario: 'write-cost',
    case: `one ${w.statementRows.toLocaleString('en')}-row INSERT … SELECT`,
    figure: `capture on ${ms(on)} ms`,
    value: on,
    baseline: `capture off ${ms(off)} ms`,
    baselineValue: off,
    ratio: off / on,
    ratioText: `${(off / on).toFixed(2)}× speed`,
    target: '≥ 0.35× speed',
    status: status(off / on >= 0.35),
  });
}

/** CPU ms (utime + stime) of each process still running, by pid (Linux /proc). */
function cpuMsOf(pids: number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of pids) {
    try {
      out.set(pid, cpuSeconds(pid) * 1000);
    } catch {
      // gone (an idle pool connection closed): left out
    }
  }
  return out;
}

/** CPU ms used since `before` by the processes that were running then and still are. */
function cpuMsSince(before: Map<number, number>): number {
  let ms = 0;
  for (const [pid, t] of cpuMsOf([...before.keys()])) ms += t - (before.get(pid) ?? t);
  return ms;
}

export const writeCost: Scenario<Sizes> = { name: 'write-cost', sizes: (mode) => SIZES[mode], run };
