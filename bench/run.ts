/*
 * `npm run bench [-- --quick | --smoke] [--only a,b] [--out file.json] [--profile] [--memory N,M]`
 *
 * Runs every scenario (bench/scenarios/, in the order of bench/scenarios/index.ts) against a
 * fresh database (created and dropped here), with the hub, the baselines and the peers each in
 * a child process of their own and the clients spread over several client workers
 * (bench/workers/clients.ts). Prints one table — each figure next to a baseline measured in the
 * same run, their ratio, the target and PASS/MISS — and writes it with the raw measurements as
 * JSON (bench/results/latest.json by default).
 *
 * Targets are reported, never asserted: the machine (2 cores shared by server, clients and
 * PostgreSQL) bounds every absolute figure, so the ratios are what to read.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { type BenchDatabase, createBenchDatabase, dropBenchDatabases, seed, serverVersion } from './lib/db.ts';
import { wallNow } from './lib/clock.ts';
import { RESULTS, killAll, spawnTs } from './lib/procs.ts';
import type { Child } from './lib/rpc.ts';
import { renderTable } from './lib/report.ts';
import type { ClientApi } from './workers/clients.ts';
import type { WriterApi } from './workers/writer.ts';
import { Bench, HARNESS_SIZES, LOG_DIR, type Mode, SEED } from './harness.ts';
import { SCENARIOS } from './scenarios/index.ts';

const T0 = wallNow();
const LOAD_AT_START = os.loadavg();
const log = (msg: string) =>
  process.stderr.write(`[bench ${((wallNow() - T0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

const options: NonNullable<ParseArgsConfig['options']> = {
  quick: { type: 'boolean', default: false },
  smoke: { type: 'boolean', default: false },
  only: { type: 'string' },
  out: { type: 'string' },
  profile: { type: 'boolean', default: false },
};
for (const s of SCENARIOS) {
  for (const [name, o] of Object.entries(s.flags ?? {})) {
    if (name in options) throw new Error(`scenario ${s.name}: option --${name} is taken`);
    options[name] = o;
  }
}
const { values: flags } = parseArgs({ options, strict: true });
const mode: Mode = flags.smoke ? 'smoke' : flags.quick ? 'quick' : 'full';

/** Every name `--only` takes: the scenarios' own and the row names they report. */
const NAMES = [...new Set(SCENARIOS.flatMap((s) => [s.name, ...(s.reports ?? [])]))];
const only = new Set(
  String(flags.only ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);
for (const s of only) if (!NAMES.includes(s)) throw new Error(`--only: unknown scenario ${s} (${NAMES.join(', ')})`);

// Each scenario's sizes for this mode (undefined: it does not run in this mode), and all of
// them side by side for the JSON.
const planned = SCENARIOS.map((scenario) => ({ scenario, sizes: scenario.sizes(mode, flags) }));
const sizes: Record<string, unknown> = { ...HARNESS_SIZES[mode] };
for (const { scenario, sizes: own } of planned) {
  for (const [k, v] of Object.entries(own ?? {})) {
    if (k in sizes) throw new Error(`scenario ${scenario.name}: sizes key ${k} is taken`);
    sizes[k] = v;
  }
}
const runs = (s: (typeof planned)[number]) =>
  s.sizes !== undefined &&
  (only.size === 0 || [s.scenario.name, ...(s.scenario.reports ?? [])].some((n) => only.has(n)));

const ADMIN_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

async function main(): Promise<number> {
  mkdirSync(LOG_DIR, { recursive: true });
  log(
    `mode ${mode}; database ${ADMIN_URL.replace(/\/\/[^@/]*@/, '//')}; load average ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  if ((os.loadavg()[0] ?? 0) > 1)
    log(`  note: other processes are busy on this ${os.cpus().length}-core machine; expect noisier figures`);
  let cleaning: Promise<void> | undefined;
  // The bench database and any a scenario made (bench.otherDatabase()) and has not dropped.
  const cleanup = () =>
    (cleaning ??= (async () => {
      await killAll(3000);
      await dropBenchDatabases().catch((err: unknown) =>
        log(`dropping a bench database failed: ${(err as Error).message}`),
      );
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: cleaning up`);
      void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    });
  }
  try {
    return await benchmark(await createBenchDatabase(ADMIN_URL));
  } catch (err) {
    log(`failed: ${(err as Error).stack ?? String(err)}`);
    return 1;
  } finally {
    await cleanup();
  }
}

/** Seeds the database, starts the workers, runs the scenarios, prints and writes the results. */
async function benchmark(db: BenchDatabase): Promise<number> {
  const harness = HARNESS_SIZES[mode];
  await seed(db.url, SEED.elections, SEED.committeesPer);
  const pgVersion = await serverVersion(db.url);
  const [w, ...cs] = await Promise.all([
    spawnTs<WriterApi>('writer', 'bench/workers/writer.ts', { logDir: LOG_DIR }),
    ...Array.from({ length: harness.workers }, (_, k) =>
      spawnTs<ClientApi>(`clients-${k}`, 'bench/workers/clients.ts', { logDir: LOG_DIR }),
    ),
  ]);
  const bench = new Bench({
    mode,
    sizes: harness,
    only,
    profile: flags.profile === true,
    db,
    adminUrl: ADMIN_URL,
    writer: (w as { child: Child<WriterApi> }).child,
    clients: cs.map((c) => (c as { child: Child<ClientApi> }).child),
    secret: `bench-${randomBytes(16).toString('hex')}`,
    runId: randomBytes(3).toString('hex'),
    redisUrl: REDIS_URL,
    log,
  });

  const timings: Record<string, number> = {};
  for (const p of planned) {
    if (!runs(p) || p.sizes === undefined) continue;
    const t = wallNow();
    await p.scenario.run(bench, p.sizes);
    timings[p.scenario.name] = Math.round((wallNow() - t) / 100) / 10;
  }

  const { rows, raw, fdCapped } = bench.results();
  const seconds = Math.round((wallNow() - T0) / 100) / 10;
  const machine = {
    loadAverageAtStart: LOAD_AT_START,
    loadAverageAtEnd: os.loadavg(),
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? '?',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: pgVersion,
  };
  const table = renderTable(rows);
  console.log(`\nelection-hub benchmarks — mode ${mode}, ${new Date().toISOString()}`);
  console.log(
    `machine: ${machine.cpus} × ${machine.cpu}, ${machine.memoryGiB} GiB, ${machine.kernel}, Node ${machine.node}, ${machine.postgres}`,
  );
  console.log(`load average (1 min) at start ${LOAD_AT_START[0]?.toFixed(2)}, at end ${os.loadavg()[0]?.toFixed(2)}\n`);
  console.log(table);
  const misses = rows.filter((r) => r.status === 'MISS').length;
  console.log(
    `\n${rows.filter((r) => r.status === 'PASS').length} PASS, ${misses} MISS, ${rows.filter((r) => r.status === 'info').length} info; ` +
      `scenario times: ${Object.entries(timings)
        .map(([k, v]) => `${k} ${v} s`)
        .join(', ')}; total ${seconds} s`,
  );
  if (fdCapped)
    console.log(
      'note: some sizes were capped by the open-file limit (see the rows marked "capped"); the figures are for the sizes shown',
    );
  const out = typeof flags.out === 'string' ? flags.out : join(RESULTS, 'latest.json');
  const json = JSON.stringify(
    {
      mode,
      fdCapped,
      startedAt: new Date(Date.now() - seconds * 1000).toISOString(),
      seconds,
      timings,
      machine,
      sizes,
      rows,
      raw,
    },
    null,
    2,
  );
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(out, json);
  if (typeof flags.out !== 'string') writeFileSync(join(RESULTS, `latest-${mode}.json`), json);
  console.log(`results: ${out}`);
  return 0;
}

process.exit(await main());
