import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { type TestClient, connect, startTestHub, token, waitUntil } from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { compare, decodeCursor, encodeCursor, type Position } from '../src/db/cursor.ts';
import { eventTopics } from '../src/events/topics.ts';

let db: TestDatabase;
let hub: Hub;
let admin: string;
let places: Array<{ e: number; c: number }>;
let topicsPool: string[];

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  places = [...s.committees.entries()].flatMap(([e, cs]) => cs.map((c) => ({ e, c })));
  topicsPool = ['election:*', ...s.elections.map((e) => `election:${e}`), ...places.map((p) => `committee:${p.c}`)];
  hub = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '40' });
  admin = await token({ sub: 'prop', role: 'admin' });
});
afterAll(async () => {
  await hub?.stop();
  await db?.drop();
});

const TABLES = ['guarantees', 'attendance', 'votes'] as const;

type Op =
  | { kind: 'write'; txns: Array<{ table: number; place: number; rows: number }>; commitOrder: number[] }
  | { kind: 'disconnect'; client: number }
  | { kind: 'resume'; client: number };

const opArb = (clients: number): fc.Arbitrary<Op> =>
  fc.oneof(
    { weight: 3, arbitrary: fc
        .array(fc.record({ table: fc.nat(2), place: fc.nat(3), rows: fc.integer({ min: 1, max: 4 }) }), { minLength: 1, maxLength: 4 })
        .chain((txns) => fc.shuffledSubarray([...txns.keys()], { minLength: txns.length, maxLength: txns.length }).map((commitOrder) => ({ kind: 'write' as const, txns, commitOrder }))) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('disconnect' as const), client: fc.nat(clients - 1) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('resume' as const), client: fc.nat(clients - 1) }) },
  );

type Logical = { topics: Set<string>; start: Position; last: Position; received: string[]; conn: TestClient | undefined; seen: number };

/** Collects the events of the current connection and advances `last`. */
const absorb = (l: Logical) => {
  if (!l.conn) return;
  const frames = l.conn.frames;
  for (; l.seen < frames.length; l.seen++) {
    const f = frames[l.seen];
    if (!f?.cursor) continue;
    const p = decodeCursor(f.cursor);
    if (!p) continue;
    if (f.type === 'subscribed' || f.type === 'connection_success') {
      if (compare(p, l.last) > 0) l.last = p;
    } else if (f.type !== 'dashboard_update') {
      l.received.push(String(f.cursor));
      if (compare(p, l.last) > 0) l.last = p;
    }
  }
};

const open = async (l: Logical) => {
  const c = await connect(hub, { token: admin, query: 'subscribe=none' });
  l.conn = c;
  l.seen = 0;
  c.send({ type: 'subscribe', topics: [...l.topics], since: encodeCursor(l.last) });
  await c.next((f) => f.type === 'subscribed');
  absorb(l);
};

it('every client stream equals the outbox order restricted to its topics, across concurrent writers, disconnects and resumes', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uniqueArray(fc.nat(topicsPool.length - 1), { minLength: 1, maxLength: 3 }), { minLength: 2, maxLength: 3 }),
      fc.array(opArb(3), { minLength: 4, maxLength: 12 }),
      async (clientTopics, ops) => {
        const head = decodeCursor(hub.cursor()) as Position;
        const clients: Logical[] = clientTopics.map((ts) => ({
          topics: new Set(ts.map((i) => topicsPool[i] as string)),
          start: head,
          last: head,
          received: [],
          conn: undefined,
          seen: 0,
        }));
        for (const l of clients) await open(l);
        for (const op of ops) {
          if (op.kind === 'write') {
            const conns = await Promise.all(op.txns.map(() => db.pool.connect()));
            try {
              for (const [i, t] of op.txns.entries()) {
                const p = places[t.place % places.length] as { e: number; c: number };
                await conns[i]?.query('BEGIN');
                await conns[i]?.query(`INSERT INTO ${TABLES[t.table]} (election_id, committee_id) SELECT $1, $2 FROM generate_series(1, $3::int)`, [p.e, p.c, t.rows]);
              }
              for (const i of op.commitOrder) await conns[i]?.query('COMMIT');
            } finally {
              for (const c of conns) c.release();
            }
          } else {
            const l = clients[op.client % clients.length] as Logical;
            if (op.kind === 'disconnect' && l.conn) {
              absorb(l);
              await l.conn.close();
              absorb(l);
              l.conn = undefined;
            } else if (op.kind === 'resume' && !l.conn) {
              await open(l);
            }
          }
          for (const l of clients) absorb(l);
        }
        for (const l of clients) if (!l.conn) await open(l);
        // Quiesce: the hub has read past every write.
        const h = await db.pool.query<{ x: string }>('SELECT pg_snapshot_xmin(pg_current_snapshot())::text x');
        const target: Position = { txid: BigInt(h.rows[0]?.x ?? '0'), id: 0n };
        await waitUntil(() => compare(decodeCursor(hub.cursor()) as Position, target) >= 0, 10_000, 'hub to catch up');
        const rows = (
          await db.pool.query<{ t: string; i: string; election_id: number | null; committee_id: number | null }>(
            // Aliased t/i so ORDER BY binds to the xid8/bigint columns, not to text.
            `SELECT txid::text AS t, id::text AS i, election_id, committee_id FROM hub.outbox
             WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND txid < $3::text::xid8 ORDER BY txid, id`,
            [head.txid.toString(), head.id.toString(), target.txid.toString()],
          )
        ).rows;
        for (const l of clients) {
          const expected = rows
            .filter((r) => eventTopics({ electionId: r.election_id, committeeId: r.committee_id, topic: null }).some((t) => l.topics.has(t)))
            .map((r) => encodeCursor({ txid: BigInt(r.t), id: BigInt(r.i) }));
          await waitUntil(() => (absorb(l), l.received.length >= expected.length), 10_000, `client stream (${l.received.length}/${expected.length})`).catch(() => undefined);
          absorb(l);
          expect(l.received).toEqual(expected);
        }
        for (const l of clients) await l.conn?.close();
      },
    ),
    { numRuns: 40, endOnFailure: true },
  );
}, 180_000);
