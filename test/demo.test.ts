// `npm run demo` end to end (a child process, as CI runs it), and the dashboard page in a real
// browser against an in-process hub that is restarted under it.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type Page, chromium } from 'playwright-core';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Hub } from '../src/main.ts';
import { buildWeb, staticFilesFrom } from '../src/http/static.ts';
import { type DemoElection, describeElections, withDirectory } from '../demo/run.ts';
import { type Simulator, seedDemo, startSimulator } from '../demo/simulator.ts';
import { findFreePort } from '../demo/embedded-postgres.ts';
import type { StaticFiles } from '../src/http/static.ts';
import { type TestDatabase, createTestDatabase } from './support/db.ts';
import { startTestHub, token as signTestToken, waitUntil } from './support/hub.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const ROW_TYPES = new Set(['guarantee_update', 'attendance_update', 'voting_update']);
const FIELDS = ['guarantees', 'attendance', 'votes'] as const;

type Counts = { guarantees: number; attendance: number; votes: number };
type Snapshot = {
  election_id: number;
  cursor: string;
  totals: Counts;
  committees: Array<Counts & { committee_id: number }>;
};

/** Pids of live processes whose command line mentions `needle` (Linux /proc). */
async function processesMentioning(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => ''); // ended meanwhile
    if (cmdline.split('\0').join(' ').includes(needle)) pids.push(Number(entry));
  }
  return pids;
}

async function getJson<T>(url: string, token?: string): Promise<{ status: number; body: T }> {
  const res = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  return { status: res.status, body: (await res.json().catch(() => undefined)) as T };
}

// ---- (a) the demo command ------------------------------------------------------------------

describe('npm run demo', () => {
  let dataDir: string;
  let child: ChildProcess | undefined;
  let output = '';

  beforeAll(async () => {
    dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'election-hub-demo-test-'));
  });

  afterAll(async () => {
    // Only after a failure is anything still running: end it, and PostgreSQL with it.
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child?.once('exit', r));
    }
    const pidFile = path.join(dataDir, 'postgres', 'postmaster.pid');
    if (existsSync(pidFile)) {
      const pid = Number.parseInt(readFileSync(pidFile, 'utf8').split('\n')[0] ?? '', 10);
      if (pid > 0 && (await processesMentioning(dataDir)).includes(pid)) process.kill(pid, 'SIGQUIT');
      await waitUntil(
        async () => (await processesMentioning(dataDir)).length === 0,
        10_000,
        'leftover postgres to exit',
      ).catch(() => undefined);
    }
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('starts everything on embedded PostgreSQL, streams changes and stops cleanly on SIGTERM', async () => {
    // As CI would: the repository root, the command `npm run demo` runs (`node
    // bin/election-hub.mjs demo`, spawned directly so SIGTERM reaches it without npm's signal
    // re-raising in between), PORT=0 and METRICS_PORT=0; DATABASE_URL/REDIS_URL from the
    // environment must be ignored.
    child = spawn(process.execPath, ['bin/election-hub.mjs', 'demo'], {
      cwd: ROOT,
      env: { ...process.env, PORT: '0', METRICS_PORT: '0', DEMO_DATA_DIR: dataDir, JWT_SECRET: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = child;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      proc.once('exit', (code, signal) => resolve({ code, signal })),
    );
    proc.stdout?.on('data', (b: Buffer) => (output += b.toString()));
    proc.stderr?.on('data', (b: Buffer) => (output += b.toString()));

    // initdb on a fresh directory takes a few seconds; the printed URL means the hub listens.
    await waitUntil(
      () => /^admin token: \S+$/m.test(output) || proc.exitCode !== null,
      120_000,
      'the demo to print its URL and token',
    );
    expect(proc.exitCode, output).toBeNull();
    const dashboard = /^dashboard: (http:\/\/127\.0\.0\.1:(\d+)\/#token=(\S+))$/m.exec(output);
    const admin = /^admin token: (\S+)$/m.exec(output)?.[1];
    expect(dashboard, output).not.toBeNull();
    const port = Number(dashboard?.[2]);
    const base = `http://127.0.0.1:${port}`;
    expect(port).toBeGreaterThan(0);
    expect(dashboard?.[3]).toBe(admin);
    expect(output).toMatch(/^ {2}election \d+: National Assembly 2026: First District \(6 committees\)$/m);
    expect(output).not.toMatch(/JWT_SECRET from the environment/);

    await waitUntil(async () => (await fetch(`${base}/ready`)).status === 200, 15_000, '/ready to answer 200');

    // The page is served, with the demo's election names built in.
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('National Assembly 2026: First District');
    expect((await fetch(`${base}/app.js`)).status).toBe(200);

    // The admin token is real: the snapshot and the admin health answer with it.
    const firstElection = Number(/^ {2}election (\d+):/m.exec(output)?.[1]);
    const snap = await getJson<Snapshot>(`${base}/dashboard/${firstElection}`, admin);
    expect(snap.status).toBe(200);
    expect(snap.body.committees).toHaveLength(6);
    expect(
      (await getJson<{ redis: { configured: boolean } }>(`${base}/admin/health`, admin)).body.redis.configured,
    ).toBe(false);

    // Metrics on their own loopback listener, as printed; not on the public port.
    const metricsUrl = /^metrics: (http:\/\/127\.0\.0\.1:\d+\/metrics)/m.exec(output)?.[1];
    expect(metricsUrl, output).toBeDefined();
    expect(await (await fetch(metricsUrl ?? '')).text()).toMatch(/^hub_listener_connected 1$/m);
    expect((await fetch(`${base}/metrics`)).status).toBe(404);

    // Row events from the simulator stream to an admin socket.
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, [`bearer.${admin}`]);
    const rows: Array<{ type: string; election_id: number }> = [];
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as { type: string; election_id: number };
      if (ROW_TYPES.has(frame.type)) rows.push(frame);
    });
    try {
      await waitUntil(() => rows.length >= 3, 15_000, 'row events from the simulator');
    } finally {
      ws.close();
    }

    proc.kill('SIGTERM');
    const exit = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
    expect(exit, output).toEqual({ code: 0, signal: null });
    expect(output).toMatch(/stopped hub[\s\S]*stopped simulator[\s\S]*stopped PostgreSQL/);
    expect(await processesMentioning(dataDir)).toEqual([]);
    // The cluster stays for the next run.
    expect(existsSync(path.join(dataDir, 'postgres', 'PG_VERSION'))).toBe(true);
  }, 180_000);
});

// ---- (b) the dashboard page in Chromium ----------------------------------------------------

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && !process.env.CI) {
  console.warn(`[demo.test] skipping the browser test: ${CHROMIUM} is missing (apt-get install -y chromium)`);
}

type PageCounts = {
  selected: number;
  totals: Counts;
  committees: Array<Counts & { committee_id: number }>;
  tabs: Array<{ election_id: number; totals: Counts }>;
  feed: string[];
};

/** What the page shows, read from the data-value attributes of its counters. */
function readPage(page: Page): Promise<PageCounts> {
  return page.evaluate(() => {
    const fields = ['guarantees', 'attendance', 'votes'] as const;
    const counts = (root: ParentNode, attr: string) => {
      const out = { guarantees: NaN, attendance: NaN, votes: NaN };
      for (const f of fields)
        out[f] = Number(root.querySelector<HTMLElement>(`[${attr}="${f}"]`)?.dataset.value ?? NaN);
      return out;
    };
    const selected = document.querySelector<HTMLElement>('[data-election][aria-selected="true"]');
    return {
      selected: Number(selected?.dataset.election),
      totals: counts(document, 'data-total'),
      committees: [...document.querySelectorAll<HTMLElement>('[data-committee]')].map((card) => ({
        committee_id: Number(card.dataset.committee),
        ...counts(card, 'data-count'),
      })),
      tabs: [...document.querySelectorAll<HTMLElement>('[data-election]')].map((tab) => ({
        election_id: Number(tab.dataset.election),
        totals: counts(tab, 'data-count'),
      })),
      feed: [...document.querySelectorAll<HTMLElement>('#feed [data-cursor]')].map((li) => li.dataset.cursor ?? ''),
    };
  });
}

describe.skipIf(!haveChromium && !process.env.CI)('dashboard page (Chromium)', () => {
  let db: TestDatabase;
  let hub: Hub | undefined;
  let simulator: Simulator | undefined;
  let browser: Browser | undefined;
  let elections: DemoElection[];
  let files: StaticFiles;
  let viewer: string;

  beforeAll(async () => {
    if (!haveChromium) throw new Error(`CI is set but ${CHROMIUM} is missing: apt-get install -y chromium`);
    buildWeb();
    db = await createTestDatabase('hub_demo_page');
    const ids = await seedDemo(db.pool);
    elections = await describeElections(db.pool, ids);
    files = withDirectory(staticFilesFrom(undefined, { build: false }), elections);
    viewer = await signTestToken({ sub: 'page-viewer', elections: ids, ttl: '1h' });
    // An explicit port, not 0: uWS binds a port it picked itself without SO_REUSEADDR, so the
    // restarted hub could not take it back while the old connections sit in TIME_WAIT.
    hub = await startTestHub(db.url, { PORT: String(await findFreePort()) }, { staticFiles: files });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
      ],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await simulator?.stop();
    await hub?.stop();
    await db?.drop();
  });

  const snapshotOf = async (id: number, token = viewer): Promise<Snapshot> => {
    const r = await getJson<Snapshot>(`${hub?.url}/dashboard/${id}`, token);
    expect(r.status).toBe(200);
    return r.body;
  };

  /** Every counter on the page equals `GET /dashboard/{id}` (the selected one in full, the rest's totals). */
  const pageMatchesSnapshots = async (page: Page, token = viewer): Promise<string | undefined> => {
    const shown = await readPage(page);
    for (const tab of shown.tabs) {
      const snap = await snapshotOf(tab.election_id, token);
      if (JSON.stringify(tab.totals) !== JSON.stringify(snap.totals))
        return `election ${tab.election_id}: page ${JSON.stringify(tab.totals)} vs ${JSON.stringify(snap.totals)}`;
      if (tab.election_id !== shown.selected) continue;
      if (JSON.stringify(shown.totals) !== JSON.stringify(snap.totals))
        return `headline: page ${JSON.stringify(shown.totals)} vs ${JSON.stringify(snap.totals)}`;
      const want = [...snap.committees]
        .sort((a, b) => a.committee_id - b.committee_id)
        .map((c) => ({
          committee_id: c.committee_id,
          guarantees: c.guarantees,
          attendance: c.attendance,
          votes: c.votes,
        }));
      const have = [...shown.committees].sort((a, b) => a.committee_id - b.committee_id);
      if (JSON.stringify(have) !== JSON.stringify(want))
        return `committees: page ${JSON.stringify(have)} vs ${JSON.stringify(want)}`;
    }
    return undefined;
  };

  const waitForMatch = async (page: Page, what: string, timeoutMs = 20_000, token = viewer) => {
    let last: string | undefined = 'not compared yet';
    await waitUntil(
      async () => (last = await pageMatchesSnapshots(page, token)) === undefined,
      timeoutMs,
      `${what} (${last})`,
    ).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}; last difference: ${last}`);
    });
  };

  it('shows live counters equal to /dashboard, keeps them through a hub restart, and loses no counts', async () => {
    const page = await browser!.newPage({ viewport: { width: 1440, height: 1000 } });
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      // Refused connections while the hub is down are expected; anything else is a problem.
      if (msg.type() === 'error' && !msg.text().includes('ERR_CONNECTION_REFUSED'))
        problems.push(`console: ${msg.text()}`);
    });
    const first = elections[0]!;
    /** Waits until the running simulator has made `n` more writes. */
    const moreWrites = async (n: number, what: string) => {
      const sim = simulator!;
      const from = sim.stats().writes;
      await waitUntil(() => sim.stats().writes >= from + n, 30_000, what);
    };

    // Some history before the page opens, then quiet: the page must show exactly the snapshot.
    simulator = startSimulator({ pool: db.pool, electionIds: elections.map((e) => e.id), ratePerSecond: 40 });
    await moreWrites(60, 'some history');
    await simulator.stop();

    await page.goto(`${hub!.url}/#token=${viewer}`);
    await page.waitForSelector('#link[data-state="connected"]', { timeout: 15_000 });
    expect(await page.textContent('#election-name')).toBe(first.name);
    expect(page.url()).not.toContain(viewer); // the token leaves the address bar once read
    await waitForMatch(page, 'the page to match the snapshots while nothing is written');
    const quiet = await readPage(page);
    expect(quiet.committees).toHaveLength(first.committees.length);
    expect(quiet.tabs.map((t) => t.election_id)).toEqual(elections.map((e) => e.id));

    // Writes move the counters (dashboard_update frames) and fill the feed (row events).
    simulator = startSimulator({ pool: db.pool, electionIds: elections.map((e) => e.id), ratePerSecond: 20 });
    await page.waitForFunction(
      (before) =>
        Number(document.querySelector<HTMLElement>('[data-election][aria-selected="true"]')?.dataset.election) > 0 &&
        ['guarantees', 'attendance', 'votes'].some(
          (f) =>
            document.querySelector<HTMLElement>(`[data-total="${f}"]`)?.dataset.value !==
            String(before[f as keyof typeof before]),
        ),
      quiet.totals,
      { timeout: 15_000 },
    );
    await page.waitForFunction(() => document.querySelectorAll('#feed [data-cursor]').length >= 3, undefined, {
      timeout: 15_000,
    });
    // Cosmetic, about time: flashes caught mid-animation make a livelier screenshot (nothing is asserted on it).
    await new Promise((r) => setTimeout(r, 1200));
    await fs.mkdir(path.join(ROOT, 'artifacts'), { recursive: true });
    await page.screenshot({ path: path.join(ROOT, 'artifacts', 'dashboard.png') });

    // The election selector switches the committees and the headline.
    const second = elections[1]!;
    await page.click(`[data-election="${second.id}"]`);
    expect(await page.textContent('#election-name')).toBe(second.name);
    expect(await page.locator('[data-committee]').count()).toBe(second.committees.length);
    await page.click(`[data-election="${first.id}"]`);

    // A real fault: the hub goes away (sockets closed with 1001) and comes back on the same
    // port while the simulator keeps writing.
    const port = hub!.port;
    await hub!.stop();
    hub = undefined;
    await page.waitForSelector('#link[data-state="reconnecting"]', { timeout: 10_000 });
    await moreWrites(30, 'writes the page cannot see yet');
    hub = await startTestHub(db.url, { PORT: String(port) }, { staticFiles: files });
    expect(hub.port).toBe(port);
    await page.waitForFunction(
      () =>
        (window as unknown as { hubDashboard: { states: string[] } }).hubDashboard.states
          .slice(-3)
          .includes('resynced'),
      undefined,
      {
        timeout: 20_000,
      },
    );
    const states = await page.evaluate(
      () => (window as unknown as { hubDashboard: { states: string[] } }).hubDashboard.states,
    );
    expect(states.slice(states.indexOf('reconnecting'))).toContain('resynced');

    // Keep writing a little on the new hub, then stop: every count must be there.
    await moreWrites(40, 'writes on the new hub');
    await simulator.stop();
    simulator = undefined;
    await waitForMatch(page, 'the page to catch up after the restart');
    const after = await readPage(page);
    expect(new Set(after.feed).size).toBe(after.feed.length); // no event shown twice
    expect(FIELDS.some((f) => after.totals[f] !== quiet.totals[f])).toBe(true);

    // Harder: changes made only while no hub runs. The new hub's reader starts at the outbox
    // head, so no dashboard_update ever covers them; the page's snapshot after reconnecting must.
    await hub.stop();
    hub = undefined;
    await page.waitForSelector('#link[data-state="reconnecting"]', { timeout: 10_000 });
    const committee = first.committees[0]!.id;
    for (let i = 0; i < 7; i++) {
      await db.pool.query('INSERT INTO attendance (election_id, committee_id, voter_name) VALUES ($1, $2, $3)', [
        first.id,
        committee,
        `Gap Voter ${i}`,
      ]);
    }
    const reconnects = (
      await page.evaluate(() => (window as unknown as { hubDashboard: { states: string[] } }).hubDashboard.states)
    ).length;
    hub = await startTestHub(db.url, { PORT: String(port) }, { staticFiles: files });
    await page.waitForFunction(
      (n) =>
        (window as unknown as { hubDashboard: { states: string[] } }).hubDashboard.states.slice(n).includes('resynced'),
      reconnects,
      { timeout: 20_000 },
    );
    await waitForMatch(page, 'the page to count the changes made while no hub ran');
    const gap = await readPage(page);
    expect(gap.totals.attendance).toBe(after.totals.attendance + 7);
    expect(gap.committees.find((c) => c.committee_id === committee)?.attendance).toBe(
      (after.committees.find((c) => c.committee_id === committee)?.attendance ?? NaN) + 7,
    );
    await page.waitForFunction(
      () =>
        document.querySelectorAll('#feed [data-cursor]').length > 0 &&
        /Gap Voter 6/.test(document.querySelector('#feed')?.textContent ?? ''),
      undefined,
      {
        timeout: 10_000,
      },
    ); // the feed got the missed rows too (the SDK resumed from its cursor)
    expect(problems).toEqual([]);
    await page.close();
  }, 120_000);

  it('stays responsive at real size: 300 committees, 300 writes/s, long tasks measured in the page; six-digit totals fit their cards', async () => {
    // One election the size of a real one's (300 committees), numbers of a real one's size
    // (six- and seven-digit totals, four-digit committees), written to at 300 rows/s.
    const COMMITTEES = 300;
    const RATE = 300;
    const MEASURE_MS = 20_000;
    const e = await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('Real size') RETURNING id`);
    const electionId = Number(e.rows[0]?.id);
    const cs = await db.pool.query<{ id: string }>(
      `INSERT INTO committees (election_id, name) SELECT $1, 'Committee ' || g FROM generate_series(1, $2::int) g RETURNING id`,
      [electionId, COMMITTEES],
    );
    const committeeIds = cs.rows.map((r) => Number(r.id));
    const votes = await db.pool.query<{ id: string }>(
      `INSERT INTO votes (election_id, committee_id, candidate, count) SELECT $1, c, 'Candidate A', 3000 + (c * 37) % 4000 FROM unnest($2::bigint[]) c RETURNING id`,
      [electionId, committeeIds],
    );
    const voteIds = votes.rows.map((r) => Number(r.id));
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, c, 'Voter ' || g FROM unnest($2::bigint[]) c, generate_series(1, 40) g`,
      [electionId, committeeIds],
    );
    // The page also shows the demo's elections (their names are built into it); this one is selected.
    const jwt = await signTestToken({
      sub: 'page-real-size',
      elections: [...elections.map((x) => x.id), electionId],
      ttl: '1h',
    });

    const page = await browser!.newPage({ viewport: { width: 1440, height: 1000 } });
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
    });
    await page.goto(`${hub!.url}/#token=${jwt}&election=${electionId}`);
    await page.waitForSelector('#link[data-state="connected"]', { timeout: 15_000 });
    await page.waitForFunction((n) => document.querySelectorAll('[data-committee]').length === n, COMMITTEES, {
      timeout: 20_000,
    });

    // Writes at RATE rows/s in ticks of 100 ms: inserts into the three tables and vote recounts.
    let writing = true;
    const pick = () => committeeIds[Math.floor(Math.random() * committeeIds.length)] as number;
    const writer = (async () => {
      const perTick = RATE / 10;
      for (let tick = 0; writing; tick++) {
        const t = Date.now();
        const g = Array.from({ length: Math.round(perTick * 0.4) }, pick);
        const a = Array.from({ length: Math.round(perTick * 0.4) }, pick);
        const v = Array.from(
          { length: Math.round(perTick * 0.2) },
          () => voteIds[Math.floor(Math.random() * voteIds.length)] as number,
        );
        await Promise.all([
          db.pool.query(
            `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, c, 'Voter ' || md5(random()::text) FROM unnest($2::bigint[]) c`,
            [electionId, g],
          ),
          db.pool.query(
            `INSERT INTO attendance (election_id, committee_id, voter_name) SELECT $1, c, 'Voter ' || md5(random()::text) FROM unnest($2::bigint[]) c`,
            [electionId, a],
          ),
          db.pool.query(`UPDATE votes SET count = count + 7 WHERE id = ANY($1::bigint[])`, [v]),
        ]);
        await new Promise((r) => setTimeout(r, Math.max(0, 100 - (Date.now() - t))));
      }
    })();
    let measured: {
      count: number;
      total: number;
      max: number;
      updates: number;
      rows: number;
      renders: number;
      cardBatches: number;
      cardsPerBatch: number;
      cardsMax: number;
    };
    // The renderer's main-thread CPU time over the same window (Chrome's own counter): long
    // tasks are wall time, which a busy machine stretches; this is what the page itself spent.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const threadTime = async () => {
      const { metrics } = (await cdp.send('Performance.getMetrics')) as {
        metrics: Array<{ name: string; value: number }>;
      };
      return metrics.find((m) => m.name === 'ThreadTime')?.value ?? Number.NaN;
    };
    let cpuSeconds: number;
    try {
      await new Promise((r) => setTimeout(r, 2000)); // the stream is flowing
      const cpu0 = await threadTime();
      measured = await page.evaluate(async (ms) => {
        const tasks: number[] = [];
        const obs = new PerformanceObserver((list) => {
          for (const entry of list.getEntries()) tasks.push(entry.duration);
        });
        obs.observe({ type: 'longtask', buffered: false });
        // The committee cards each batch of DOM changes touched (a batch is what one task, such
        // as one animation-frame render, changed): a count, independent of the machine's speed.
        const touched: number[] = [];
        const dom = new MutationObserver((records) => {
          const cards = new Set<Element>();
          for (const r of records) {
            const el = r.target instanceof Element ? r.target : r.target.parentElement;
            const card = el?.closest('[data-committee]');
            if (card) cards.add(card);
          }
          if (cards.size > 0) touched.push(cards.size);
        });
        dom.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
        const probe = (
          window as unknown as { hubDashboard: { received?: () => { updates: number; rows: number; renders: number } } }
        ).hubDashboard;
        const before = probe.received?.() ?? { updates: 0, rows: 0, renders: 0 };
        await new Promise((r) => setTimeout(r, ms));
        obs.disconnect();
        dom.disconnect();
        const after = probe.received?.() ?? { updates: 0, rows: 0, renders: 0 };
        return {
          count: tasks.length,
          total: tasks.reduce((a, b) => a + b, 0),
          max: tasks.reduce((a, b) => Math.max(a, b), 0),
          updates: after.updates - before.updates,
          rows: after.rows - before.rows,
          renders: after.renders - before.renders,
          cardBatches: touched.length,
          cardsPerBatch: touched.reduce((x, y) => x + y, 0) / Math.max(1, touched.length),
          cardsMax: touched.reduce((x, y) => Math.max(x, y), 0),
        };
      }, MEASURE_MS);
      cpuSeconds = (await threadTime()) - cpu0;
    } finally {
      writing = false;
      await writer;
      await cdp.detach().catch(() => undefined);
    }
    console.log(
      `[demo.test] real size: ${COMMITTEES} committees, ${RATE} writes/s: in ${MEASURE_MS / 1000} s ${measured.count} long tasks, ` +
        `${Math.round(measured.total)} ms in total, longest ${Math.round(measured.max)} ms; main thread CPU ${cpuSeconds.toFixed(2)} s; ` +
        `the page took ${measured.updates} dashboard updates and ${measured.rows} row events and drew ${measured.renders} frames; ` +
        `${measured.cardBatches} batches of DOM changes touched ${measured.cardsPerBatch.toFixed(1)} of ${COMMITTEES} committee cards on average, ${measured.cardsMax} at most`,
    );
    // It kept up: everything the page shows equals GET /dashboard once the writes stop.
    await waitForMatch(page, 'the page to match the snapshot after the writes', 30_000, jwt);
    // The stream reached the page all along (not a page that stopped listening).
    expect(measured.rows).toBeGreaterThan(RATE * (MEASURE_MS / 1000) * 0.5);
    expect(measured.updates).toBeGreaterThan((MEASURE_MS / 1000) * 2);
    // Responsive. The page before the delta protocol spent 7-10 s of every 20 s in long tasks at
    // this size; with deltas but drawing as it did, 3.5-4.1 s (up to 220 ms each) and 4.8 s of
    // main-thread CPU; drawing only what changed: under 100 ms and 1.6-4.2 s of CPU (the CPU
    // follows the machine's speed, so it is printed, not asserted). What is asserted besides the
    // long tasks is a count: a render touches the cards of the committees that changed since the
    // last one (54 on average, 83 at most, in one run here), never every card, as a page that
    // redraws the list would (300 in each render).
    expect(measured.total).toBeLessThan(500);
    expect(measured.max).toBeLessThan(200);
    expect(measured.renders).toBeGreaterThan(0);
    expect(measured.cardsPerBatch).toBeLessThan(COMMITTEES / 2);

    // Six- and seven-digit numbers fit: no counter runs past its card or cell.
    const overflow = await page.evaluate(() => {
      const out: string[] = [];
      for (const el of document.querySelectorAll<HTMLElement>('[data-total], [data-committee] [data-count]')) {
        const box = el.closest<HTMLElement>('.stat, .cell');
        if (!box) continue;
        const r = el.getBoundingClientRect();
        const b = box.getBoundingClientRect();
        if (r.right > b.right + 0.5 || r.left < b.left - 0.5)
          out.push(
            `${el.dataset.total ?? el.dataset.count}=${el.textContent} (${Math.round(r.width)} px in ${Math.round(b.width)} px)`,
          );
      }
      return out;
    });
    expect(overflow).toEqual([]);
    await page.screenshot({ path: path.join(ROOT, 'artifacts', 'dashboard-real-size.png') });
    const shown = await readPage(page);
    expect(shown.totals.votes).toBeGreaterThan(999_999);
    // The feed is live and bounded.
    expect(shown.feed.length).toBeGreaterThan(10);
    expect(shown.feed.length).toBeLessThanOrEqual(50);
    expect(problems).toEqual([]);
    await page.close();
  }, 180_000);
});
