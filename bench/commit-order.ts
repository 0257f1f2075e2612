/*
 * `node bin/run-ts.mjs bench/commit-order.ts [--quick] [--only write|page|held|plans|pollers] [--out file.json]`
 *
 * What the commit order (sql/006_commit_order.sql, keys given after the commit since
 * sql/009_sequencer.sql) costs and what it buys, on a fresh database:
 *
 * 1. Write cost of the capture, sending no NOTIFY (no reader asleep: NOTIFY serializes commits by
 *    itself): `capture` against `off` (triggers disabled). Single-row inserts as fast as 1, 4 and
 *    8 writers go (pairs of adjacent runs, their ratio's median: this machine is shared); the
 *    backend CPU time of a one-row transaction; what hub.sequence costs the hub per key it gives
 *    and per call with nothing new; one 20 000-row INSERT … SELECT, wall and backend CPU. The full
 *    capture (a reader asleep: every commit NOTIFYs) alongside for scale.
 * 2. Delivery while a write transaction is held open for 10 s in another database of the same
 *    cluster (and, second, one in this database that wrote a watched table and has not
 *    committed): one row every 100 ms written meanwhile, through a hub in this process; each
 *    row's latency from its INSERT returning to its frame arriving.
 * 3. A reader's page: from a writer's NOTIFY arriving to the page's rows in hand, with the keys
 *    given and the rows read in one call (hub.next_page, sql/011_sequence_and_read.sql), in two
 *    (hub.sequence, then the page), and a page with nothing to key (the writer wrote an
 *    uncaptured table; the last keyed row is read: about what a reader paid before keys were
 *    given after the commit). Beside them, where the one call's time goes: a bare round trip
 *    (`SELECT 1`), `hub.sequence()` alone, and the reader's read before sql/009 (rows below the
 *    snapshot's xmin in (txid, id) order). One committed row per NOTIFY; the six take turns
 *    event by event, one every 20 ms (idle) and every 2 ms. Then, once the database holds 100 000 keys
 *    (300 000 in full mode), the call with its generic plan (sql/013_reader_plans.sql)
 *    against a copy planned afresh at every call, as before 013, taking turns at idle.
 * 4. `--only plans` (alone): a reader connection plans its calls on an (almost) empty outbox,
 *    then one session writes 10 000 transactions (20 000 in full mode) that nothing analyzes; the
 *    reader's next calls, keying 5 000 each until none is left, then reading two 1 000-row pages
 *    and replaying 1 000 rows twice (readRange), with sql/013 and an unnamed replay statement and
 *    as before: 013's settings taken off, the replay prepared once by name (each on a fresh
 *    database).
 * 5. `--only pollers` (alone): 1, 3 and 10 readers (and 6 in full mode) polling `hub.next_page`
 *    every 2 ms, as busy hub nodes do, while 4 writers commit 500 one-row transactions/s: pages
 *    read, a page's p50 and p90, the backends waiting on the sequencer's lock (sampled every 5
 *    ms) and commit→rows p50. Every page takes that lock: what it costs grows with the nodes.
 *
 * Figures are reported, never asserted (a shared 2-core machine bounds them).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import pg from 'pg';
import WebSocket from 'ws';
import { createBenchDatabase, committeeId, seed, setTriggersSql, writeHistory } from './lib/db.ts';
import { readRange } from '../src/db/outbox.ts';
import { type HeldWhere, describeHeld, heldResult, holdOpen } from './lib/held.ts';
import { median } from './lib/stats.ts';
import { parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/log.ts';
import { startHub } from '../src/main.ts';
import { signToken } from '../src/auth/jwt.ts';

const { values: args } = parseArgs({
  options: { quick: { type: 'boolean' }, out: { type: 'string' }, only: { type: 'string' } },
});
// `--only held` measures part 2 alone (it needs no commit keys: it runs on the (txid, id) order too).
const only = args.only;
const quick = args.quick === true;
const SECONDS = quick ? 1 : 1.5;
const ROUNDS = quick ? 4 : 8;
const STATEMENT_ROUNDS = quick ? 4 : 8;
const HOLD_MS = 10_000;
const ADMIN = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

const log = (s: string) => process.stderr.write(`${s}\n`);
class Done extends Error {}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const db = await createBenchDatabase(ADMIN);
const other = await createBenchDatabase(ADMIN);
const result: Record<string, unknown> = { quick };
try {
  await seed(db.url, 2, 10);
  const sql = async (text: string, values: unknown[] = []) => {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      return (await c.query(text, values)).rows;
    } finally {
      await c.end();
    }
  };
  const first = committeeId(2, 1, 10);

  /** Part 1: what the capture costs writers now that keys are given after the commit, and what giving them costs. */
  const writeCost = async () => {
    // The generated capture (sql/005) sends no NOTIFY while no reader has declared itself asleep
    // (nobody does here), so `capture` is the capture without NOTIFY; `full capture` adds a
    // standing sleeper, so that every commit NOTIFYs (an idle hub's case). Since
    // sql/009_sequencer.sql a writer's transaction does nothing at COMMIT: no key, no lock.
    const SLEEPER = 'bench-commit-order-sleeper';
    type State = 'off' | 'capture' | 'full capture';
    const setState = async (s: State) => {
      await sql(setTriggersSql('guarantees', s !== 'off'));
      await sql(
        s === 'full capture' ? `SELECT lapsed FROM hub.sleep('${SLEEPER}', 600000)` : `SELECT hub.awake('${SLEEPER}')`,
      );
    };
    const flatOut = async (writers: number, seconds: number) => {
      const clients = Array.from({ length: writers }, () => new pg.Client({ connectionString: db.url }));
      await Promise.all(clients.map((c) => c.connect()));
      let n = 0;
      const end = performance.now() + seconds * 1000;
      const t0 = performance.now();
      await Promise.all(
        clients.map(async (c, ci) => {
          for (let k = ci; performance.now() < end; k++) {
            await c.query({
              name: 'ins',
              text: 'INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)',
              values: [2, first + (k % 10)],
            });
            n++;
          }
        }),
      );
      const s = (performance.now() - t0) / 1000;
      await Promise.all(clients.map((c) => c.end()));
      return n / s;
    };
    /** Gives keys to everything committed so far (no hub runs here): keeps the outbox as a hub would. */
    const sequenceAll = async () => {
      for (;;) {
        const before = String(((await sql('SELECT hub.commit_frontier()::text AS f'))[0] as { f: string }).f);
        const after = String(((await sql('SELECT hub.sequence()::text AS f'))[0] as { f: string }).f);
        if (after === before) return;
      }
    };

    // ---- 1. write cost -----------------------------------------------------------------
    // The machine is shared: absolute rates drift with everyone else's load, so the capture's
    // cost is read from pairs of adjacent runs (off, capture; the order alternates), as the
    // median of the pairs' ratios. The full capture is measured in the same rounds for scale.
    const states: State[] = ['off', 'capture', 'full capture'];
    const single: Record<string, { rates: Record<State, number[]>; pairRatios: number[] }> = {};
    for (const writers of [1, 4, 8]) {
      const rates = { off: [], capture: [], 'full capture': [] } as Record<State, number[]>;
      const pairRatios: number[] = [];
      await setState('capture');
      await flatOut(writers, 0.5); // warm-up
      for (let r = 0; r < ROUNDS; r++) {
        const order: State[] = r % 2 ? ['capture', 'off'] : ['off', 'capture'];
        const pair: Partial<Record<State, number>> = {};
        for (const s of order) {
          await setState(s);
          pair[s] = await flatOut(writers, SECONDS);
          rates[s].push(pair[s] as number);
        }
        pairRatios.push((pair.capture as number) / (pair.off as number));
        if (r % 3 === 0) {
          await setState('full capture');
          rates['full capture'].push(await flatOut(writers, SECONDS));
        }
        await sequenceAll();
      }
      single[writers] = { rates, pairRatios };
      log(
        `${writers} writer(s): ${states.map((s) => `${s} ${Math.round(median(rates[s]))}/s`).join(', ')}; capture ÷ off (paired) ${median(pairRatios).toFixed(3)}`,
      );
    }
    // Server-side cost per transaction, without the client's round trips or the other sessions on
    // this machine: the backend's own CPU time (/proc/<pid>/schedstat, Linux) for a procedure that
    // inserts one row and commits, N times (synchronous_commit off: the WAL flush is the same for
    // both and only adds waiting).
    await sql(`CREATE PROCEDURE bench_txns(n int) LANGUAGE plpgsql AS $$
      BEGIN
        FOR i IN 1..n LOOP
          INSERT INTO guarantees (election_id, committee_id) VALUES (2, ${first});
          COMMIT;
        END LOOP;
      END $$`);
    const parts: Array<[string, string[]]> = [
      ['capture off', [setTriggersSql('guarantees', false)]],
      ['capture', [setTriggersSql('guarantees', true)]],
    ];
    await setState('capture');
    const cpu: Record<string, number[]> = {};
    // And what giving the keys costs the hub: one hub.sequence call after each batch of N
    // one-row transactions (CPU of its backend per key), and a call with nothing new.
    const sequencerUsPerKey: number[] = [];
    const sequencerIdleUs: number[] = [];
    {
      const c = new pg.Client({ connectionString: db.url });
      const s = new pg.Client({ connectionString: db.url });
      await c.connect();
      await s.connect();
      try {
        await c.query('SET synchronous_commit = off');
        const schedNs = async (client: pg.Client) => {
          const pid = Number((await client.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p);
          return () => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
        };
        const ns = await schedNs(c);
        const sns = await schedNs(s);
        const N = quick ? 3000 : 5000;
        for (let r = 0; r < ROUNDS; r++) {
          for (const [name, stmts] of parts) {
            for (const st of stmts) await sql(st);
            const c0 = ns();
            await c.query(`CALL bench_txns(${N})`);
            (cpu[name] ??= []).push((ns() - c0) / 1000 / N);
          }
          const s0 = sns();
          await s.query('SELECT hub.sequence(true, 1000000)');
          sequencerUsPerKey.push((sns() - s0) / 1000 / N);
          await new Promise((res) => setTimeout(res, 120)); // past the horizon's 100 ms: a call that writes nothing
          const s1 = sns();
          await s.query('SELECT hub.sequence()');
          sequencerIdleUs.push((sns() - s1) / 1000);
        }
      } finally {
        await c.end();
        await s.end();
      }
    }
    log(
      `backend CPU per one-row transaction: ${parts.map(([n]) => `${n} ${median(cpu[n] ?? []).toFixed(1)} µs`).join(', ')}; ` +
        `hub.sequence: ${median(sequencerUsPerKey).toFixed(1)} µs per key, ${median(sequencerIdleUs).toFixed(0)} µs for a call with nothing new`,
    );
    // One 20 000-row statement: wall time and the backend's CPU time, states interleaved.
    const statement: Record<State, number[]> = { off: [], capture: [], 'full capture': [] };
    const statementCpu: Record<State, number[]> = { off: [], capture: [], 'full capture': [] };
    {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      try {
        const pid = Number((await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p);
        const ns = () => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
        for (let r = 0; r < STATEMENT_ROUNDS; r++) {
          for (const st of r % 2 ? [...states].reverse() : states) {
            await setState(st);
            const t0 = performance.now();
            const c0 = ns();
            await c.query(
              `INSERT INTO guarantees (election_id, committee_id) SELECT 2, $1::bigint + (g % 10) FROM generate_series(1, 20000) g`,
              [first],
            );
            statementCpu[st].push((ns() - c0) / 1e6);
            statement[st].push(performance.now() - t0);
          }
        }
      } finally {
        await c.end();
      }
    }
    log(
      `20 000-row statement: ${states.map((st) => `${st} ${median(statement[st]).toFixed(1)} ms (CPU ${median(statementCpu[st]).toFixed(1)} ms)`).join(', ')}`,
    );
    await setState('capture'); // as migrated, nobody asleep
    await sequenceAll();
    await sql('ANALYZE');
    result.writeCost = {
      single: Object.fromEntries(
        Object.entries(single).map(([w, r]) => [
          w,
          {
            medians: Object.fromEntries(states.map((s) => [s, Math.round(median(r.rates[s]))])),
            captureRatioPaired: median(r.pairRatios),
            raw: r,
          },
        ]),
      ),
      backendCpuUsPerTransaction: {
        medians: Object.fromEntries(parts.map(([n]) => [n, median(cpu[n] ?? [])])),
        raw: cpu,
      },
      sequencer: {
        backendCpuUsPerKey: median(sequencerUsPerKey),
        backendCpuUsIdleCall: median(sequencerIdleUs),
        raw: { perKey: sequencerUsPerKey, idle: sequencerIdleUs },
      },
      statement: {
        wallMs: Object.fromEntries(states.map((st) => [st, median(statement[st])])),
        backendCpuMs: Object.fromEntries(states.map((st) => [st, median(statementCpu[st])])),
        raw: { wall: statement, cpu: statementCpu },
      },
    };
  };
  if (only !== 'held' && only !== 'page' && only !== 'plans' && only !== 'pollers') await writeCost();

  // ---- 4. the reader's plans after the outbox grew unanalyzed (sql/013_reader_plans.sql) --
  const plans = async () => {
    const growth = quick ? 10_000 : 20_000;
    const out: Record<string, { keyingMs: number[]; pageMs: number[]; replayMs: number[] }> = {};
    const all = { all: true, elections: [], committees: [], topics: [] };
    for (const variant of ['013', 'before 013'] as const) {
      const d = await createBenchDatabase(ADMIN);
      const [admin, reader] = [0, 1].map(() => new pg.Client({ connectionString: d.url })) as [pg.Client, pg.Client];
      try {
        await seed(d.url, 1, 1);
        await Promise.all([admin.connect(), reader.connect()]);
        if (variant === 'before 013')
          await admin.query(`ALTER FUNCTION hub.sequence(boolean, integer) RESET enable_seqscan;
            ALTER FUNCTION hub.sequence(boolean, integer) RESET jit;
            ALTER FUNCTION hub.next_page(bigint, bigint, integer, bigint) RESET ALL`);
        // Nothing analyzes the tables meanwhile (autovacuum would, sooner or later).
        await admin.query(`ALTER TABLE hub.outbox SET (autovacuum_enabled = false);
          ALTER TABLE hub.commits SET (autovacuum_enabled = false); ANALYZE hub.outbox, hub.commits`);
        // A replay (readRange) as the hub runs it, and as it ran before: prepared once, by name.
        const replayDb = (variant === '013'
          ? reader
          : {
              query: (q: pg.QueryConfig) => reader.query({ ...q, name: 'bench_read_range_named' }),
            }) as unknown as pg.Pool;
        const replay = (from: bigint, to: bigint) =>
          readRange(replayDb, { seq: from, id: 0n }, { seq: to, id: 0n }, all, 1000);
        // The reader's plans, made on the (nearly) empty outbox, past the first five runs.
        let head = '';
        for (let i = 0; i < 7; i++) {
          head = String((await reader.query('SELECT hub.sequence()::text AS f')).rows[0]?.f);
          await reader.query('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [head]);
          await replay(BigInt(head) - 1n, BigInt(head));
        }
        const start = BigInt(head);
        await writeHistory(admin, growth, { election: 1, committee: committeeId(1, 1, 1) }, false);
        const r = { keyingMs: [] as number[], pageMs: [] as number[], replayMs: [] as number[] };
        const timed = async (text: string, values: unknown[] = []) => {
          const t = performance.now();
          await reader.query(text, values);
          return performance.now() - t;
        };
        // Every call keys 5 000 until none is left (growth / 5 000 calls), then pages of 1 000 rows.
        for (let k = 0; k < growth / 5000; k++) r.keyingMs.push(await timed('SELECT hub.sequence(true, 5000)'));
        for (let k = 0; k < 2; k++) {
          r.pageMs.push(await timed('SELECT * FROM hub.next_page($1::bigint, 0, 1000, 4194304)', [head]));
          head = (BigInt(head) + 1000n).toString();
        }
        for (let k = 0; k < 2; k++) {
          const t = performance.now();
          const rows = await replay(start + 3000n * BigInt(k), start + BigInt(growth));
          if (rows.length !== 1000) throw new Error(`the replay read ${rows.length} rows, not 1 000`);
          r.replayMs.push(performance.now() - t);
        }
        out[variant] = r;
        const f = (xs: number[]) => xs.map((x) => `${x.toFixed(1)} ms`).join(', ');
        log(
          `plans, ${variant}, after ${growth} unanalyzed writes: keying 5 000 ${f(r.keyingMs)}; a 1 000-row page ${f(r.pageMs)}; a 1 000-row replay ${f(r.replayMs)}`,
        );
      } finally {
        await Promise.all([admin.end(), reader.end()]);
        await d.drop();
      }
    }
    result.plans = { growth, ...out };
  };
  if (only === 'plans') {
    await plans();
    throw new Done();
  }

  // ---- 5. readers polling: what every node's page costs the sequencer's lock -------------
  const pollers = async () => {
    const counts = quick ? [1, 3, 10] : [1, 3, 6, 10];
    const rounds = quick ? 1 : 2;
    const conns = await Promise.all(
      Array.from({ length: 4 + Math.max(...counts) + 1 }, async () => {
        const c = new pg.Client({ connectionString: db.url });
        await c.connect();
        return c;
      }),
    );
    const [monitor, ...rest] = conns as [pg.Client, ...pg.Client[]];
    const writers = rest.slice(0, 4);
    const readers = rest.slice(4);
    const wall = () => performance.timeOrigin + performance.now();
    type Run = { calls: number; callP50: number; callP90: number; waiting: number; latencyP50: number };
    const out: Record<string, Run[]> = {};
    try {
      for (let round = 0; round < rounds; round++)
        for (const n of counts) {
          let stop = false;
          const calls: number[] = [];
          const latency: number[] = [];
          // Each reader polls as a busy hub does: a page, 2 ms, the next page.
          const polling = readers.slice(0, n).map(async (r) => {
            let seq = String((await r.query('SELECT hub.sequence()::text AS f')).rows[0]?.f);
            let id = '0';
            while (!stop) {
              const t = performance.now();
              const page = await r.query({
                name: 'bench_poll',
                text: 'SELECT seq, id, data FROM hub.next_page($1::bigint, $2::bigint, 1000, 4194304)',
                values: [seq, id],
              });
              calls.push(performance.now() - t);
              const at = wall();
              for (const row of page.rows as Array<{ seq: string | null; id: string | null; data: string | null }>) {
                const m = /"voter_name": ?"W([0-9.]+)"/.exec(row.data ?? '');
                if (m) latency.push(at - Number(m[1]));
                if (row.seq !== null) [seq, id] = [row.seq, row.id ?? '0'];
              }
              await sleep(2);
            }
          });
          // Backends waiting on the sequencer's lock (an advisory lock), sampled every 5 ms.
          let samples = 0;
          let waiting = 0;
          const sampling = (async () => {
            while (!stop) {
              const w = await monitor.query<{ w: number }>(
                `SELECT count(*)::int AS w FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'`,
              );
              samples++;
              waiting += w.rows[0]?.w ?? 0;
              await sleep(5);
            }
          })();
          // 4 writers, 500 one-row commits/s together, for 3 s.
          const total = 1500;
          const start = wall() + 20;
          await Promise.all(
            writers.map(async (w, wi) => {
              for (let k = wi; k < total; k += writers.length) {
                const wait = start + k * 2 - wall();
                if (wait > 1) await sleep(wait);
                await w.query({
                  name: 'bench_poll_write',
                  text: 'INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (2, $1, $2)',
                  values: [first, `W${wall().toFixed(3)}`],
                });
              }
            }),
          );
          await sleep(50);
          stop = true;
          await Promise.all([...polling, sampling]);
          const q = (xs: number[], f: number) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * f)] ?? NaN;
          const run: Run = {
            calls: calls.length,
            callP50: q(calls, 0.5),
            callP90: q(calls, 0.9),
            waiting: waiting / Math.max(1, samples),
            latencyP50: q(latency, 0.5),
          };
          (out[`${n} readers`] ??= []).push(run);
          log(
            `pollers, ${n} readers: ${run.calls} pages, page p50 ${run.callP50.toFixed(2)} ms, p90 ${run.callP90.toFixed(2)} ms; ` +
              `${run.waiting.toFixed(2)} backends waiting on the lock on average; commit→rows p50 ${run.latencyP50.toFixed(2)} ms`,
          );
        }
    } finally {
      await Promise.all(conns.map((c) => c.end()));
    }
    result.pollers = out;
  };
  if (only === 'pollers') {
    await pollers();
    throw new Done();
  }

  // ---- 3. a reader's page: notification -> rows in hand ---------------------------------
  const page = async () => {
    const [w, l, q] = [0, 1, 2].map(() => new pg.Client({ connectionString: db.url }));
    const clients = [w, l, q] as pg.Client[];
    await Promise.all(clients.map((c) => c.connect()));
    try {
      const [W, L, Q] = clients as [pg.Client, pg.Client, pg.Client];
      await L.query('LISTEN bench_page');
      await Q.query('CREATE TABLE bench_page_plain (x int)');
      const frontier = async () => BigInt(String((await Q.query('SELECT hub.sequence()::text AS f')).rows[0]?.f));
      /** A page from `fn` (hub.next_page or a copy of it) after `from`, which must hold a row. */
      const pageCall = (fn: string, name: string) => async (from: bigint) => {
        const r = await Q.query({
          name,
          text: `SELECT * FROM ${fn}($1::bigint, 0, 1000, 4194304)`,
          values: [from.toString()],
        });
        if (r.rows[0]?.seq == null) throw new Error('the page is empty');
      };
      const nextPage = pageCall('hub.next_page', 'page');
      let head = await frontier();
      /** The reader's read before sql/009 (src/db/outbox.ts then): rows below the horizon, after the last one read. */
      const lastWritten = async () =>
        String((await Q.query("SELECT coalesce(max(txid)::text, '0') AS t FROM hub.outbox")).rows[0]?.t);
      let lastTxid = await lastWritten();
      const readBeforeKeys = async () => {
        const r = await Q.query({
          name: 'before_keys',
          text: `WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
            SELECT s.x::text AS horizon, coalesce((SELECT max(h.txid) FROM hub.outbox h) >= s.x, false) AS held, o.*
            FROM s LEFT JOIN LATERAL (
              SELECT ob.txid::text AS txid, ob.id::text AS id, ob.kind, ob.action, ob.topic, ob.election_id::text AS election_id,
                ob.committee_id::text AS committee_id, ob.row_id::text AS row_id, ob.data::text AS data,
                (extract(epoch FROM ob.committed_at) * 1000)::float8 AS committed_ms, ob.fetched::int AS fetched
              FROM (
                SELECT l.*, sum(l.bytes) OVER (ORDER BY l.txid, l.id ROWS UNBOUNDED PRECEDING) - l.bytes AS before,
                       count(*) OVER () AS fetched
                FROM (SELECT ob.*, CASE WHEN pg_column_compression(ob.data) IS NULL THEN coalesce(pg_column_size(ob.data), 0)
                                        ELSE octet_length(ob.data::text) END AS bytes
                      FROM hub.outbox ob WHERE (ob.txid, ob.id) > ($1::text::xid8, 0) AND ob.txid < s.x
                      ORDER BY ob.txid, ob.id LIMIT 1000) l) ob
              WHERE ob.before < 4194304 ORDER BY ob.txid, ob.id) o ON true`,
          values: [lastTxid],
        });
        if (r.rows[0]?.txid == null) throw new Error('the read before keys found nothing');
      };
      /** Each variant in turn, one event each, `gapMs` apart: from the NOTIFY arriving to its rows in hand (medians). */
      const measure = async <V extends string>(
        label: string,
        gapMs: number,
        variants: Record<V, { call: () => Promise<void>; captured: boolean }>,
      ): Promise<Record<V, number>> => {
        const names = Object.keys(variants) as V[];
        const ms = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<V, number[]>;
        const events = quick ? 150 : 450;
        for (let i = 0; i < events + 3 * names.length; i++) {
          const v = names[i % names.length] as V;
          await sleep(gapMs);
          let arrived = 0;
          const got = new Promise<void>((resolve) =>
            L.once('notification', () => {
              arrived = performance.now();
              resolve();
            }),
          );
          await W.query('BEGIN');
          if (variants[v].captured)
            await W.query('INSERT INTO guarantees (election_id, committee_id) VALUES (2, $1)', [first]);
          else await W.query('INSERT INTO bench_page_plain VALUES (1)');
          await W.query('NOTIFY bench_page');
          const committed = W.query('COMMIT');
          await got;
          await variants[v].call();
          const t = performance.now() - arrived;
          await committed;
          if (i >= 3 * names.length) ms[v].push(t); // the first rounds are a warm-up
          head = await frontier();
          lastTxid = await lastWritten();
        }
        log(
          `page, ${label}: notification -> rows ${names.map((n) => `${n} ${median(ms[n]).toFixed(2)} ms`).join(', ')}`,
        );
        return Object.fromEntries(names.map((n) => [n, median(ms[n])])) as Record<V, number>;
      };
      const out: Record<string, Record<string, number>> = {};
      for (const [label, gapMs] of [
        ['idle', 20],
        ['every 2 ms', 2],
      ] as const) {
        out[label] = await measure(label, gapMs, {
          'one call': { call: () => nextPage(head), captured: true },
          'two calls': {
            call: async () => {
              await Q.query({ name: 'seq', text: 'SELECT hub.sequence()' });
              await nextPage(head);
            },
            captured: true,
          },
          // The writer wrote an uncaptured table: nothing to key, the last keyed row is read.
          'read alone': { call: () => nextPage(head - 1n), captured: false },
          // Where the one call's time goes, each on its own: a bare round trip, hub.sequence
          // keying the row (and committing that), and the read a reader ran before keys were
          // given after the commit (006's order: rows below the snapshot's xmin, by (txid, id)).
          'round trip (SELECT 1)': {
            call: async () => void (await Q.query({ name: 'one', text: 'SELECT 1' })),
            captured: true,
          },
          'hub.sequence alone': {
            call: async () => void (await Q.query({ name: 'seq', text: 'SELECT hub.sequence()' })),
            captured: true,
          },
          'the read before keys': { call: () => readBeforeKeys(), captured: true },
        });
      }

      // The same call on a database that holds an election night's keys (sql/013): the page with
      // its generic plan, as migrated, and a copy of hub.next_page without it (PL/pgSQL's own
      // choice: a custom plan at every call), taking turns.
      const historyKeys = quick ? 100_000 : 300_000;
      const filled = performance.now();
      await writeHistory(Q, historyKeys, { election: 2, committee: first }, true);
      await Q.query(String.raw`DO $$ BEGIN EXECUTE regexp_replace(
        replace(pg_get_functiondef('hub.next_page(bigint, bigint, integer, bigint)'::regprocedure),
                'hub.next_page(', 'public.bench_next_page_custom('),
        '
\s*SET plan_cache_mode TO [^
]*', ''); END $$`);
      head = await frontier();
      log(`page: ${historyKeys} keys of history written in ${((performance.now() - filled) / 1000).toFixed(1)} s`);
      const custom = pageCall('public.bench_next_page_custom', 'page_custom');
      const history = await measure(`idle, ${historyKeys} keys held`, 20, {
        'generic plan (013)': { call: () => nextPage(head), captured: true },
        'custom plans (before 013)': { call: () => custom(head), captured: true },
      });
      out[`idle, ${historyKeys} keys held`] = {
        ...history,
        'custom ÷ generic': history['custom plans (before 013)'] / history['generic plan (013)'],
      };
      result.page = out;
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  };
  if (only === undefined || only === 'page') await page();
  if (only === 'page') throw new Done();

  // ---- 2. delivery while a write transaction is held open ------------------------------
  const secret = 'bench-secret-0123456789abcdef-0123456789';
  const parsed = parseConfig(
    { DATABASE_URL: db.url, JWT_SECRET: secret, PORT: '0', HOST: '127.0.0.1', METRICS_PORT: '0', LOG_LEVEL: 'warn' },
    { database: true },
  );
  if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
  if (only === 'write') throw new Done();
  const hub = await startHub(parsed.config, { log: createLogger('warn') });
  try {
    const token = await signToken(secret, { sub: 'bench', role: 'admin', ttl: '1h' });
    const held = async (where: HeldWhere) => {
      const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws?token=${token}`);
      const arrived = new Map<string, number>();
      ws.on('message', (m) => {
        const f = JSON.parse(String(m)) as { type: string; data?: { voter_name?: string } };
        const name = f.data?.voter_name;
        if (f.type === 'guarantee_update' && name?.startsWith('P')) arrived.set(name, performance.now());
      });
      await new Promise((r) => ws.once('message', r)); // connection_success
      const holder = await holdOpen(where, where === 'another database' ? other.url : db.url, {
        election: 2,
        committee: first,
      });
      const writer = new pg.Client({ connectionString: db.url });
      await writer.connect();
      const sent = new Map<string, number>();
      const t0 = performance.now();
      for (let i = 0; performance.now() - t0 < HOLD_MS - 500; i++) {
        const name = `P${i}`;
        await writer.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES (2, $1, $2)`, [
          first,
          name,
        ]);
        sent.set(name, performance.now());
        await sleep(100);
      }
      await sleep(Math.max(0, HOLD_MS - (performance.now() - t0)));
      const latencies = (names: string[]) => names.map((n) => (arrived.get(n) as number) - (sent.get(n) as number));
      const whileHeld = [...sent.keys()].filter((n) => arrived.has(n));
      await holder.commit();
      // Rows that waited for it arrive now (up to 2 s).
      for (let k = 0; k < 20 && arrived.size < sent.size; k++) await sleep(100);
      const after = [...sent.keys()].filter((n) => arrived.has(n) && !whileHeld.includes(n));
      await writer.end();
      ws.close();
      const out = heldResult(HOLD_MS, sent.size, latencies(whileHeld), latencies(after));
      log(describeHeld(where, out));
      return out;
    };
    result.heldOpen = {
      anotherDatabase: await held('another database'),
      sameDatabaseUncommittedWatched: await held('this database'),
    };
  } finally {
    await hub.stop();
  }
} catch (err) {
  if (!(err instanceof Done)) throw err;
} finally {
  await db.drop();
  await other.drop();
}
if (args.out) writeFileSync(args.out, JSON.stringify(result, null, 2));
console.log(JSON.stringify(result, (k, v) => (k === 'raw' ? undefined : v), 2));
