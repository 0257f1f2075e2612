import WebSocket from 'ws';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { SECRET, sequenced, token, waitUntil } from './support/hub.ts';
import { spawnHub, type HubProcess } from './support/hub-process.ts';
import { compare, decodeCursor, type Position } from '../src/events/position.ts';

const CLIENTS = 5000;
let db: TestDatabase;
let hub: HubProcess;
let e1: number;
let c1: number;

beforeAll(async () => {
  db = await createTestDatabase('hub_storm');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
  hub = await spawnHub({ DATABASE_URL: db.url, JWT_SECRET: SECRET, MAX_MESSAGES_PER_SECOND: '100' });
});
afterAll(async () => {
  await hub?.stop();
  await db?.drop();
});

const CURSOR = /"cursor":"([0-9a-z]+\.[0-9a-z]+)"/;

/** A light client: counts events and keeps the last cursor without parsing JSON. */
type Light = {
  token: string;
  last: Position;
  events: number;
  ws: WebSocket | undefined;
  ordered: boolean;
  closes: string[];
  retries: number;
  done: boolean;
};

function attach(c: Light, url: string, resume: boolean): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url}/ws?token=${c.token}${resume ? '&subscribe=none' : ''}`);
    c.ws = ws;
    let opened = false;
    ws.on('error', (err) => c.closes.push(`error:${err.message}`));
    ws.on('close', (code, reason) => {
      c.closes.push(`${code}:${reason.toString()}`);
      // Like any real client: a connection lost unexpectedly is retried (resumed from the
      // last cursor once it had one), so every attach eventually settles.
      if (!c.done && c.ws === ws && (resume || !opened)) {
        c.retries++;
        setTimeout(() => void attach(c, url, resume).then(resolve, resolve), 50 + Math.random() * 200);
      }
    });
    ws.on('open', () => {
      if (resume)
        ws.send(
          JSON.stringify({
            type: 'subscribe',
            topics: [`election:${e1}`],
            since: `${c.last.seq.toString(36)}.${c.last.id.toString(36)}`,
          }),
        );
    });
    ws.on('message', (data) => {
      const text = data.toString();
      const m = CURSOR.exec(text);
      if (text.startsWith('{"type":"connection_success"')) {
        if (!resume && m?.[1]) c.last = decodeCursor(m[1]) as Position;
        if (!resume) {
          opened = true;
          resolve();
        }
        return;
      }
      if (text.startsWith('{"type":"subscribed"')) {
        resolve();
        return;
      }
      if (!m?.[1] || text.startsWith('{"type":"dashboard_update"')) return;
      const p = decodeCursor(m[1]) as Position;
      if (compare(p, c.last) <= 0) c.ordered = false;
      c.last = p;
      c.events++;
    });
  });
}

async function inBatches<T>(items: T[], size: number, fn: (t: T) => Promise<void>) {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

const scrape = async () => (await fetch(`${hub.metricsUrl}/metrics`)).text();
const heapUsed = async () => Number(/^nodejs_heap_size_used_bytes (\S+)/m.exec(await scrape())?.[1]);

it(`a reconnect storm: ${CLIENTS} clients drop at once and resume while writes go on; every client ends complete; memory returns near baseline`, async () => {
  const tokens = await Promise.all(
    Array.from({ length: CLIENTS }, (_, i) => token({ sub: `storm-${i}`, elections: [e1] })),
  );
  const clients: Light[] = tokens.map((t) => ({
    token: t,
    last: { seq: 0n, id: 0n },
    events: 0,
    ws: undefined,
    ordered: true,
    closes: [],
    retries: 0,
    done: false,
  }));
  await inBatches(clients, 250, (c) => attach(c, hub.url, false));
  const start = new Map(clients.map((c) => [c, c.last]));
  // The baseline has all of them open and counted by the hub.
  await waitUntil(
    async () => new RegExp(`^hub_connections ${CLIENTS}$`, 'm').test(await scrape()),
    20_000,
    `hub_connections ${CLIENTS}`,
  );
  const baseline = await heapUsed();

  let writing = true;
  let written = 0;
  const writer = (async () => {
    while (writing) {
      await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
      written++;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  /** Waits until the writer has written `n` more rows (writes before, during and after the drop). */
  const moreRows = async (n: number, what: string) => {
    const from = written;
    await waitUntil(() => written >= from + n, 30_000, what);
  };
  await moreRows(10, 'writes before the drop');
  // Everyone's network drops at once.
  for (const c of clients) c.ws?.terminate();
  await waitUntil(async () => /^hub_connections 0$/m.test(await scrape()), 20_000, 'the hub to see every socket drop');
  await moreRows(10, 'writes while everyone is away');
  const t0 = Date.now();
  await inBatches(clients, 500, (c) => attach(c, hub.url, true));
  const reconnectMs = Date.now() - t0;
  await moreRows(10, 'writes after everyone resumed');
  writing = false;
  await writer;

  await sequenced(db.pool);
  const total = Number((await db.pool.query<{ n: string }>(`SELECT count(*)::text n FROM hub.outbox`)).rows[0]?.n);
  const expectedFor = async (from: Position) =>
    Number(
      (
        await db.pool.query<{ n: string }>(
          `SELECT count(*)::text n FROM hub.outbox_in_order WHERE (seq, id) > ($1::bigint, $2::bigint)`,
          [from.seq.toString(), from.id.toString()],
        )
      ).rows[0]?.n,
    );
  const expected = new Map<Position, number>();
  for (const p of new Set(start.values())) expected.set(p, await expectedFor(p));
  await waitUntil(
    () => clients.every((c) => c.events >= (expected.get(start.get(c) as Position) ?? 0)),
    30_000,
    'every client complete',
  );
  for (const c of clients) {
    expect(c.ordered).toBe(true);
    expect(c.events).toBe(expected.get(start.get(c) as Position));
  }
  expect(total).toBeGreaterThan(10);
  const retries = clients.reduce((n, c) => n + c.retries, 0);
  console.log(
    `storm: ${CLIENTS} clients resumed in ${reconnectMs} ms (${retries} resumed connections dropped and retried); ${total} events; heap baseline ${(baseline / 1e6).toFixed(1)} MB`,
  );

  for (const c of clients) c.done = true;
  for (const c of clients) c.ws?.close();
  await waitUntil(async () => /^hub_connections 0$/m.test(await scrape()), 20_000, 'all closed');
  // Memory back near the baseline (which had all 5 000 sockets open): nothing retained per storm.
  let after = await heapUsed();
  await waitUntil(
    async () => (after = await heapUsed()) < baseline * 1.5 + 32e6,
    20_000,
    `heap back near baseline (${after})`,
  );
  console.log(`storm: heap after ${(after / 1e6).toFixed(1)} MB`);
}, 300_000);
