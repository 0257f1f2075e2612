import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  type Frame,
  type TestClient,
  connect,
  eventsReceived,
  headCursor,
  readPast,
  sequenced,
  startTestHub,
  token,
  upgradeStatus,
  waitUntil,
} from './support/hub.ts';
import type { Hub } from '../src/main.ts';
import { decodeCursor, encodeCursor } from '../src/events/position.ts';
import { RowEvent } from '../src/events/schema.ts';
import { createCommitteeDirectory } from '../src/db/committees.ts';
import { createLogger } from '../src/log.ts';

// Issue 15, items 2-5: ids beyond 2^53, one spelling per topic, rights that follow the
// database at the time of each row, and bounded committee lookups.

let db: TestDatabase;
let e1: number;
let e2: number;
let c1: number;

beforeAll(async () => {
  db = await createTestDatabase('hub_rights');
  const s = await seed(db.pool, 2, 2);
  [e1, e2] = s.elections as [number, number];
  c1 = (s.committees.get(e1) as number[])[0] as number;
});
afterAll(async () => db?.drop());

/**
 * The position of the last row written so far: a `since` after exactly everything written.
 * (Not the horizon: another test file's open transaction can hold it below this file's rows.)
 */
const written = () => headCursor(db.pool);

/** Waits until the hub has read past everything written so far. */
const settled = (hub: Hub) => readPast(hub, db.pool);

/** A connection that also keeps every frame's raw text (precision checks need the text). */
async function open(hub: Hub, t: string, query?: string): Promise<TestClient & { raw: string[] }> {
  const c = await connect(hub, { token: t, ...(query ? { query } : {}) });
  const raw: string[] = [];
  c.ws.on('message', (d) => raw.push(d.toString()));
  await c.next((f) => f.type === 'connection_success');
  return Object.assign(c, { raw });
}

/** Sends one frame and returns the answer (subscribed/unsubscribed/error). */
async function ask(c: TestClient, frame: Record<string, unknown>): Promise<Frame> {
  const before = c.frames.length;
  c.send(frame);
  await waitUntil(
    () => c.frames.slice(before).some((f) => ['subscribed', 'unsubscribed', 'error'].includes(f.type)),
    10_000,
    `answer to ${JSON.stringify(frame).slice(0, 80)}`,
  );
  return c.frames.slice(before).find((f) => ['subscribed', 'unsubscribed', 'error'].includes(f.type)) as Frame;
}

const names = (frames: Frame[]) =>
  frames.map((f) => (f.data as { voter_name?: string } | undefined)?.voter_name ?? f.type);

describe('ids of 2^53 and above travel exactly', () => {
  const BIG_E = '9007199254740993'; // 2^53 + 1: no double holds it
  const BIG_C = '9223372036854775807'; // the largest bigint
  const BIG_ROW = '9007199254740995';

  it('hub.to_bigint accepts the whole bigint range and yields NULL for anything else; hub.publish takes such topics', async () => {
    const cases: Array<[string, string | null]> = [
      ['9223372036854775807', '9223372036854775807'],
      ['-9223372036854775808', '-9223372036854775808'],
      ['9223372036854775808', null],
      ['-9223372036854775809', null],
      ['99999999999999999999', null],
      ['123456789012345678', '123456789012345678'],
      ['1234567890123456789', '1234567890123456789'],
      ['007', '7'],
      ['00000000000000000000000000042', '42'],
      ['abc', null],
      ['1.5', null],
      ['', null],
      ['-', null],
    ];
    for (const [input, expected] of cases) {
      const r = await db.pool.query<{ v: string | null }>('SELECT hub.to_bigint($1)::text AS v', [input]);
      expect({ input, v: r.rows[0]?.v }).toEqual({ input, v: expected });
    }
    await db.pool.query(`SELECT hub.publish('election:${BIG_C}', 'note', '{}')`);
    await expect(db.pool.query(`SELECT hub.publish('election:9223372036854775808', 'note', '{}')`)).rejects.toThrow(
      /topic/,
    );
  });

  it('rows, app events, claims, topics and GET /dashboard/{id} with such ids: nobody misses them, ids are exact', async () => {
    await db.pool.query(`INSERT INTO elections (id, name) VALUES ($1, 'Big')`, [BIG_E]);
    await db.pool.query(`INSERT INTO committees (id, election_id, name) VALUES ($1, $2, 'Big committee')`, [
      BIG_C,
      BIG_E,
    ]);
    const hub = await startTestHub(db.url);
    const clients: TestClient[] = [];
    try {
      const admin = await open(hub, await token({ sub: 'big-admin', role: 'admin' }));
      const viewer = await open(hub, await token({ sub: 'big-viewer', elections: [BIG_E] }));
      const member = await open(hub, await token({ sub: 'big-member', committees: [BIG_C] }));
      const viaElection = await open(hub, await token({ sub: 'big-via', elections: [BIG_E] }), 'subscribe=none');
      clients.push(admin, viewer, member, viaElection);
      expect(viewer.frames[0]).toMatchObject({ topics: [`election:${BIG_E}`, 'user:big-viewer'] });
      expect(member.frames[0]).toMatchObject({ topics: [`committee:${BIG_C}`, 'user:big-member'] });
      expect(await ask(viaElection, { type: 'subscribe', topics: [`committee:${BIG_C}`] })).toMatchObject({
        type: 'subscribed',
      });

      await db.pool.query(
        `INSERT INTO guarantees (id, election_id, committee_id, voter_name) VALUES ($1, $2, $3, 'big')`,
        [BIG_ROW, BIG_E, BIG_C],
      );
      await db.pool.query(`SELECT hub.publish('committee:${BIG_C}', 'note', '{"n":1}')`);
      for (const c of [admin, viewer, member, viaElection]) {
        const events = await eventsReceived(c, 2);
        expect(events.map((f) => f.type).slice(-2)).toEqual(['guarantee_update', 'note']);
        const text = c.raw.find((r) => r.includes('"guarantee_update"')) as string;
        // Safe integers would be numbers; these are exact decimal strings, the row key is its jsonb text.
        expect(text).toContain(`"election_id":"${BIG_E}","committee_id":"${BIG_C}","id":${BIG_ROW}`);
        expect(text).toContain(`"data":{"id":${BIG_ROW},`);
        expect(text).toContain(`"committee_id":${BIG_C},`);
        expect(RowEvent.safeParse(JSON.parse(text)).success).toBe(true);
        expect(c.raw.find((r) => r.includes('"note"'))).toContain(`"topic":"committee:${BIG_C}"`);
      }

      const res = await fetch(`${hub.url}/dashboard/${BIG_E}`, {
        headers: { authorization: `Bearer ${await token({ sub: 'big-viewer', elections: [BIG_E] })}` },
      });
      expect(res.status).toBe(200);
      const body = await res.text();
      expect(body).toContain(`"election_id":"${BIG_E}"`);
      expect(body).toContain(`"committee_id":"${BIG_C}","guarantees":1`);

      // A number claim beyond 2^53 cannot be exact: refused, never rounded to someone else's election.
      expect(await upgradeStatus(hub, { token: await token({ sub: 'round', elections: [2 ** 53] }) })).toBe(401);
      // Safe ids stay JSON numbers.
      const small = await open(hub, await token({ sub: 'small', elections: [String(e1)] }));
      clients.push(small);
      await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
      await eventsReceived(small, 1);
      expect(small.raw.find((r) => r.includes('"guarantee_update"'))).toContain(
        `"election_id":${e1},"committee_id":${c1},"id":`,
      );
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await hub.stop();
    }
  });

  it('a resume from PostgreSQL past full pages of malformed rows delivers every good row written after them', async () => {
    const since = await written();
    // Genuinely malformed rows (a kind no decoder accepts), on the topics being resumed.
    await db.pool.query(
      `INSERT INTO hub.outbox (kind, action, election_id, committee_id, data) SELECT repeat('x', 100), 'created', $1, $2, '{}' FROM generate_series(1, 2500)`,
      [e1, c1],
    );
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, 'good' || g FROM generate_series(1, 50) g`,
      [e1, c1],
    );
    // A hub started after the writes has none of them in memory: the replay reads PostgreSQL pages.
    // (A ring of 10 events keeps that true even when a held horizon made this hub read the rows live.)
    const hub = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '10' });
    try {
      for (const topics of [['election:*'], [`election:${e1}`], [`committee:${c1}`]]) {
        const c = await open(hub, await token({ sub: 'resumer', role: 'admin' }), 'subscribe=none');
        c.send({ type: 'subscribe', topics, since });
        await c.next((f) => f.type === 'subscribed', 30_000);
        const before = c.frames.slice(
          0,
          c.frames.findIndex((f) => f.type === 'subscribed'),
        );
        expect({ topics, got: names(before.filter((f) => f.type === 'guarantee_update')) }).toEqual({
          topics,
          got: Array.from({ length: 50 }, (_, i) => `good${i + 1}`),
        });
        await c.close();
      }
    } finally {
      await hub.stop();
    }
  }, 60_000);
});

describe('one spelling per topic', () => {
  it('every other spelling of a topic is refused with bad_topic, on subscribe and unsubscribe', async () => {
    const hub = await startTestHub(db.url);
    try {
      const t = await token({ sub: 'speller', role: 'admin' });
      const bad = [
        `election:0${e1}`,
        'election:00',
        `election:+${e1}`,
        `election: ${e1}`,
        `election:${e1} `,
        `Election:${e1}`,
        'election:9223372036854775808',
        `election:${e1}.0`,
        `committee:0${c1}`,
        'committee:00',
        `committee:+${c1}`,
        'committee:99999999999999999999',
        'committee:',
        'election:',
        'election:**',
        'election:*x',
        `user:`,
        'user:a b',
        'users:speller',
      ];
      let c = await open(hub, t, 'subscribe=none');
      let n = 0;
      for (const topic of bad) {
        for (const type of ['subscribe', 'unsubscribe']) {
          // Error answers count as bad frames: a fresh socket before the 1008 limit.
          if (++n % 8 === 0) {
            await c.close();
            c = await open(hub, t, 'subscribe=none');
          }
          expect({ topic, type, answer: await ask(c, { type, topics: [topic] }) }).toMatchObject({
            topic,
            type,
            answer: { type: 'error', code: 'bad_topic' },
          });
        }
      }
      await c.close();
      for (const topic of [
        'election:*',
        `election:${e1}`,
        'election:0',
        `committee:${c1}`,
        'committee:9223372036854775807',
        'user:speller',
      ]) {
        const ok = await open(hub, t, 'subscribe=none');
        expect({ topic, answer: await ask(ok, { type: 'subscribe', topics: [topic] }) }).toMatchObject({
          topic,
          answer: { type: 'subscribed', topics: [topic] },
        });
        expect(await ask(ok, { type: 'unsubscribe', topics: [topic] })).toMatchObject({
          type: 'unsubscribed',
          topics: [topic],
        });
        await ok.close();
      }
      await expect(db.pool.query(`SELECT hub.publish('election:0${e1}', 'note', '{}')`)).rejects.toThrow(/topic/);
      await expect(db.pool.query(`SELECT hub.publish('committee:0${c1}', 'note', '{}')`)).rejects.toThrow(/topic/);
      await expect(db.pool.query(`SELECT hub.publish('election:00', 'note', '{}')`)).rejects.toThrow(/topic/);
    } finally {
      await hub.stop();
    }
  });

  it("election:01 does not silence the socket's committee topics", async () => {
    const hub = await startTestHub(db.url);
    try {
      const c = await open(hub, await token({ sub: 'zero', elections: [e1] }), 'subscribe=none');
      expect(await ask(c, { type: 'subscribe', topics: [`committee:${c1}`] })).toMatchObject({ type: 'subscribed' });
      expect(await ask(c, { type: 'subscribe', topics: [`election:0${e1}`] })).toMatchObject({
        type: 'error',
        code: 'bad_topic',
      });
      await db.pool.query(
        `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, 'after-01')`,
        [e1, c1],
      );
      expect(names(await eventsReceived(c, 1))).toEqual(['after-01']);
      await c.close();
    } finally {
      await hub.stop();
    }
  });
});

describe('rights follow the database, at the time of the row', () => {
  it("a committee moves to another election and back: live and replayed rows follow each row's own election", async () => {
    const ea = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('A') RETURNING id`)).rows[0]?.id,
    );
    const eb = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('B') RETURNING id`)).rows[0]?.id,
    );
    const cm = Number(
      (
        await db.pool.query<{ id: string }>(
          `INSERT INTO committees (election_id, name) VALUES ($1, 'mover') RETURNING id`,
          [ea],
        )
      ).rows[0]?.id,
    );
    const cb = Number(
      (
        await db.pool.query<{ id: string }>(
          `INSERT INTO committees (election_id, name) VALUES ($1, 'stays') RETURNING id`,
          [eb],
        )
      ).rows[0]?.id,
    );
    const write = (e: number, c: number, name: string) =>
      db.pool.query(`INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [e, c, name]);
    const move = (e: number) => db.pool.query(`UPDATE committees SET election_id = $1 WHERE id = $2`, [e, cm]);

    let hub = await startTestHub(db.url);
    const clients: TestClient[] = [];
    try {
      const viewerA = await token({ sub: 'viewer-a', elections: [ea] });
      const v1 = await open(hub, viewerA, 'subscribe=none'); // committee:cm through election A only
      expect(await ask(v1, { type: 'subscribe', topics: [`committee:${cm}`] })).toMatchObject({ type: 'subscribed' });
      const v1all = await open(hub, viewerA); // election:A, and committee:cm on top
      expect(await ask(v1all, { type: 'subscribe', topics: [`committee:${cm}`] })).toMatchObject({
        type: 'subscribed',
      });
      const direct = await open(hub, await token({ sub: 'direct', committees: [cm] }));
      const directA = await open(hub, await token({ sub: 'direct-a', elections: [ea], committees: [cm] }));
      const directB = await open(hub, await token({ sub: 'direct-b', elections: [eb], committees: [cm] }));
      const viewerB = await open(hub, await token({ sub: 'viewer-b', elections: [eb] }));
      clients.push(v1, v1all, direct, directA, directB, viewerB);
      const since = await written();

      await write(ea, cm, 'r1');
      await eventsReceived(direct, 1);
      await move(eb);
      // Subscribed right after the move: the admission cache may still say A; the rows decide.
      const v1new = await open(hub, viewerA, 'subscribe=none');
      clients.push(v1new);
      const v1newAnswer = await ask(v1new, { type: 'subscribe', topics: [`committee:${cm}`] });
      await write(eb, cm, 'r2');
      await eventsReceived(direct, 2);
      // Within the stated staleness, a viewer of A may no longer subscribe committee:cm.
      await waitUntil(
        async () => {
          const probe = await open(hub, viewerA, 'subscribe=none');
          const answer = await ask(probe, { type: 'subscribe', topics: [`committee:${cm}`] });
          await probe.close();
          if (answer.type === 'error') expect(answer.code).toBe('forbidden_topic');
          return answer.type === 'error';
        },
        15_000,
        'committee:cm refused to a viewer of A',
      );
      await move(ea);
      await write(ea, cm, 'r3');
      await write(eb, cb, 'fence');

      // Each stream ends with its last expected row: anything wrongly delivered would precede it.
      const expected: Array<[TestClient, string[]]> = [
        [v1, ['r1', 'r3']],
        [v1all, ['r1', 'r3']],
        [direct, ['r1', 'r2', 'r3']],
        [directA, ['r1', 'r2', 'r3']],
        [directB, ['r1', 'r2', 'r3', 'fence']],
        [viewerB, ['r2', 'fence']],
        [v1new, v1newAnswer.type === 'subscribed' ? ['r3'] : []],
      ];
      const check = async () => {
        for (const [c, want] of expected) {
          if (want.length === 0) continue;
          await eventsReceived(c, want.length);
          const sub = String(c.frames.find((f) => f.type === 'connection_success')?.sub);
          expect({ sub, got: names(c.events()) }).toEqual({ sub, got: want });
        }
      };
      await check();
      if (v1newAnswer.type !== 'subscribed') expect(v1new.events()).toEqual([]);

      // Replays across both moves obey the same rule: first from the ring, then (new hub) from PostgreSQL.
      for (const round of ['ring', 'postgres']) {
        if (round === 'postgres') {
          await Promise.all(clients.map((c) => c.close()));
          clients.length = 0;
          await hub.stop();
          // One event of ring: the replay reads PostgreSQL even if a held horizon made this hub read the rows live.
          hub = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '1' });
        } else {
          await settled(hub);
          // Back in A: within the stated staleness a viewer of A may subscribe committee:cm again.
          await waitUntil(
            async () => {
              const probe = await open(hub, viewerA, 'subscribe=none');
              const answer = await ask(probe, { type: 'subscribe', topics: [`committee:${cm}`] });
              await probe.close();
              return answer.type === 'subscribed';
            },
            15_000,
            'committee:cm admitted again',
          );
        }
        const replays: Array<[string, string, string[], string[]]> = [
          ['viewer-a', viewerA, [`committee:${cm}`], ['r1', 'r3']],
          ['viewer-a+e', viewerA, [`election:${ea}`, `committee:${cm}`], ['r1', 'r3']],
          ['direct', await token({ sub: 'direct', committees: [cm] }), [`committee:${cm}`], ['r1', 'r2', 'r3']],
          [
            'direct-a',
            await token({ sub: 'direct-a', elections: [ea], committees: [cm] }),
            [`election:${ea}`, `committee:${cm}`],
            ['r1', 'r2', 'r3'],
          ],
          [
            'direct-b',
            await token({ sub: 'direct-b', elections: [eb], committees: [cm] }),
            [`election:${eb}`, `committee:${cm}`],
            ['r1', 'r2', 'r3', 'fence'],
          ],
          ['viewer-b', await token({ sub: 'viewer-b', elections: [eb] }), [`election:${eb}`], ['r2', 'fence']],
        ];
        for (const [who, t, topics, want] of replays) {
          const c = await open(hub, t, 'subscribe=none');
          c.send({ type: 'subscribe', topics, since });
          const answer = await c.next((f) => f.type === 'subscribed' || f.type === 'error');
          expect(answer.type).toBe('subscribed');
          const replayed = c.frames.slice(0, c.frames.indexOf(answer)).filter((f) => f.type === 'guarantee_update');
          expect({ round, who, got: names(replayed) }).toEqual({ round, who, got: want });
          await c.close();
        }
      }
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await hub.stop();
    }
  }, 90_000);

  it('after a move, sockets already subscribed through the old election get nothing of the new one', async () => {
    const ea = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('A2') RETURNING id`)).rows[0]?.id,
    );
    const eb = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('B2') RETURNING id`)).rows[0]?.id,
    );
    const cm = Number(
      (
        await db.pool.query<{ id: string }>(
          `INSERT INTO committees (election_id, name) VALUES ($1, 'm2') RETURNING id`,
          [ea],
        )
      ).rows[0]?.id,
    );
    const hub = await startTestHub(db.url);
    try {
      // The reproduction: UPDATE committees SET election_id = 2 WHERE id = 2, then rows of election 2.
      const v = await open(hub, await token({ sub: 'repro', elections: [ea] }), 'subscribe=none');
      expect(await ask(v, { type: 'subscribe', topics: [`committee:${cm}`] })).toMatchObject({ type: 'subscribed' });
      await db.pool.query(`UPDATE committees SET election_id = $1 WHERE id = $2`, [eb, cm]);
      for (let i = 0; i < 5; i++)
        await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, $3)`, [eb, cm, i]);
      await db.pool.query(`SELECT hub.publish('committee:${cm}', 'moved', '{}')`); // routed through committees: election B
      await db.pool.query(`INSERT INTO votes (election_id, committee_id, count) VALUES ($1, $2, 99)`, [ea, cm]);
      const [only] = await eventsReceived(v, 1);
      expect(only).toMatchObject({ type: 'voting_update', election_id: ea, data: { count: 99 } });
      expect(v.events()).toHaveLength(1);
      await v.close();
    } finally {
      await hub.stop();
    }
  });
});

describe("live, ring and PostgreSQL replay all follow the contract's rule", () => {
  it('random rows of one committee under two elections: every socket gets exactly the rows the rule admits, in order', async () => {
    const ea = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('P-A') RETURNING id`)).rows[0]?.id,
    );
    const eb = Number(
      (await db.pool.query<{ id: string }>(`INSERT INTO elections (name) VALUES ('P-B') RETURNING id`)).rows[0]?.id,
    );
    const cm = Number(
      (
        await db.pool.query<{ id: string }>(
          `INSERT INTO committees (election_id, name) VALUES ($1, 'p-m') RETURNING id`,
          [ea],
        )
      ).rows[0]?.id,
    );
    const cx = Number(
      (
        await db.pool.query<{ id: string }>(
          `INSERT INTO committees (election_id, name) VALUES ($1, 'p-x') RETURNING id`,
          [ea],
        )
      ).rows[0]?.id,
    );
    type Persona = { sub: string; role?: string; elections: number[]; committees: number[]; topics: string[] };
    const personas: Persona[] = [
      { sub: 'p1', elections: [ea], committees: [], topics: [`committee:${cm}`] },
      { sub: 'p2', elections: [ea], committees: [], topics: [`election:${ea}`, `committee:${cm}`] },
      { sub: 'p3', elections: [], committees: [cm], topics: [`committee:${cm}`] },
      { sub: 'p4', elections: [ea], committees: [cm], topics: [`election:${ea}`, `committee:${cm}`] },
      { sub: 'p5', elections: [eb], committees: [cm], topics: [`election:${eb}`, `committee:${cm}`] },
      { sub: 'p6', elections: [ea, eb], committees: [], topics: [`committee:${cm}`, `committee:${cx}`] },
      { sub: 'p7', elections: [eb], committees: [], topics: [`election:${eb}`] },
      { sub: 'p8', role: 'admin', elections: [], committees: [], topics: [`committee:${cm}`, `election:${ea}`] },
    ];
    for (const p of personas) p.topics.push(`user:${p.sub}`);
    const tokenOf = (p: Persona) =>
      token({ sub: p.sub, ...(p.role ? { role: p.role } : {}), elections: p.elections, committees: p.committees });
    // The contract's statement, written out independently of the hub's code.
    const admits = (
      p: Persona,
      r: { election_id: string | null; committee_id: string | null; topic: string | null },
    ) => {
      if (r.topic?.startsWith('user:')) return p.topics.includes(r.topic);
      if (r.election_id !== null && p.topics.includes(`election:${r.election_id}`)) return true;
      if (r.committee_id === null || !p.topics.includes(`committee:${r.committee_id}`)) return false;
      return (
        p.role === 'admin' ||
        p.committees.map(String).includes(r.committee_id) ||
        (r.election_id !== null && p.elections.map(String).includes(r.election_id))
      );
    };

    let hub = await startTestHub(db.url);
    const live: TestClient[] = [];
    try {
      for (const p of personas) {
        const c = await open(hub, await tokenOf(p), 'subscribe=none');
        expect(await ask(c, { type: 'subscribe', topics: p.topics })).toMatchObject({ type: 'subscribed' });
        live.push(c);
      }
      const since = await written();
      let seed = 20_251_201;
      // An LCG's low bits cycle: use its high bits.
      const rand = (n: number) => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31), Math.floor(seed / 2 ** 15) % n);
      for (let t = 0; t < 25; t++) {
        const rows = Array.from({ length: 1 + rand(5) }, () => [rand(2) ? ea : eb, rand(4) ? cm : cx] as const);
        const values = rows.map((_, i) => `($${2 * i + 1}::bigint, $${2 * i + 2}::bigint, 'w${t}')`).join(', ');
        await db.pool.query(
          `INSERT INTO guarantees (election_id, committee_id, voter_name) VALUES ${values}`,
          rows.flat(),
        );
        if (rand(5) === 0) await db.pool.query(`SELECT hub.publish('committee:${cm}', 'note', '{}')`);
        if (rand(7) === 0) await db.pool.query(`SELECT hub.publish('election:${eb}', 'note', '{}')`);
      }
      for (const p of personas) await db.pool.query(`SELECT hub.publish('user:${p.sub}', 'end', '{}')`);
      await settled(hub);
      await sequenced(db.pool);
      const outbox = (
        await db.pool.query<{
          t: string;
          i: string;
          election_id: string | null;
          committee_id: string | null;
          topic: string | null;
        }>(
          `SELECT seq::text AS t, id::text AS i, election_id::text AS election_id, committee_id::text AS committee_id, topic
           FROM hub.outbox_in_order WHERE (seq, id) > ($1::bigint, 0) ORDER BY seq, id`,
          [String(decodeCursor(since)?.seq)],
        )
      ).rows;
      const expected = personas.map((p) =>
        outbox.filter((r) => admits(p, r)).map((r) => encodeCursor({ seq: BigInt(r.t), id: BigInt(r.i) })),
      );
      // The mix the rule is about: rows of cm under both elections, and some that p1 may not see.
      expect(
        outbox.filter((r) => r.committee_id === String(cm) && r.election_id === String(eb)).length,
      ).toBeGreaterThan(3);
      expect(
        outbox.filter((r) => r.committee_id === String(cm) && r.election_id === String(ea)).length,
      ).toBeGreaterThan(3);
      const cursors = (frames: Frame[]) =>
        frames
          .filter((f) => f.cursor && !['subscribed', 'connection_success', 'dashboard_update'].includes(f.type))
          .map((f) => String(f.cursor));
      for (const [k, c] of live.entries()) {
        await waitUntil(
          () => c.frames.some((f) => f.type === 'end'),
          15_000,
          `${personas[k]?.sub} to get its end marker`,
        );
        expect({ sub: personas[k]?.sub, got: cursors(c.frames) }).toEqual({ sub: personas[k]?.sub, got: expected[k] });
      }
      for (const round of ['ring', 'postgres']) {
        if (round === 'postgres') {
          await Promise.all(live.map((c) => c.close()));
          live.length = 0;
          await hub.stop();
          // One event of ring: the replay reads PostgreSQL even if a held horizon made this hub read the rows live.
          hub = await startTestHub(db.url, { REPLAY_BUFFER_EVENTS: '1' });
        }
        for (const [k, p] of personas.entries()) {
          const c = await open(hub, await tokenOf(p), 'subscribe=none');
          c.send({ type: 'subscribe', topics: p.topics, since });
          const answer = await c.next((f) => f.type === 'subscribed' || f.type === 'error');
          expect(answer.type).toBe('subscribed');
          expect({ round, sub: p.sub, got: cursors(c.frames.slice(0, c.frames.indexOf(answer))) }).toEqual({
            round,
            sub: p.sub,
            got: expected[k],
          });
          await c.close();
        }
      }
    } finally {
      await Promise.all(live.map((c) => c.close()));
      await hub.stop();
    }
  }, 90_000);
});

describe('bounded committee lookups, claims first', () => {
  it('the directory caps known and absent entries and batches lookups', async () => {
    let queries = 0;
    const counting = {
      query: (text: string, values: unknown[]) => {
        queries++;
        return db.pool.query(text, values);
      },
    } as unknown as typeof db.pool;
    const dir = createCommitteeDirectory(counting, createLogger('silent'), { maxEntries: 100, ttlMs: 60_000 });
    const random = () => String(1_000_000_000 + Math.floor(Math.random() * 1e12));
    // 2 400 unknown ids asked for by 24 concurrent subscribers: remembered at most 100, in few queries.
    await Promise.all(Array.from({ length: 24 }, () => dir.electionsOf(Array.from({ length: 100 }, random))));
    expect(dir.stats().entries).toBeLessThanOrEqual(100);
    expect(queries).toBeLessThanOrEqual(3);
    const known = await dir.electionsOf([String(c1)]);
    expect(known.get(String(c1))).toBe(String(e1));
    const q = queries;
    await dir.electionsOf([String(c1)]);
    expect(queries).toBe(q); // cached
  });

  it('subscribe frames with random unknown committees keep the directory under its cap; a token without elections costs no lookup', async () => {
    const hub = await startTestHub(db.url, { MAX_MESSAGES_PER_SECOND: '1000' });
    const adminToken = await token({ sub: 'health', role: 'admin' });
    const directory = async () => {
      const r = await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${adminToken}` } });
      return ((await r.json()) as { committee_directory: { entries: number; max_entries: number; lookups: number } })
        .committee_directory;
    };
    try {
      const start = await directory();
      // No elections in the token: committee:X is refused from the claims alone.
      const member = await open(hub, await token({ sub: 'member-only', committees: [c1] }), 'subscribe=none');
      for (let i = 0; i < 9; i++) {
        const topics = Array.from({ length: 200 }, (_, k) => `committee:${5_000_000 + i * 200 + k}`);
        expect(await ask(member, { type: 'subscribe', topics })).toMatchObject({
          type: 'error',
          code: 'forbidden_topic',
        });
      }
      expect(await ask(member, { type: 'subscribe', topics: [`committee:${c1}`] })).toMatchObject({
        type: 'subscribed',
      });
      await member.close();
      expect((await directory()).lookups).toBe(start.lookups);

      // A token with elections: lookups happen, batched per frame, and stay bounded in memory.
      let named = 0;
      for (let s = 0; named <= start.max_entries + 2000; s++) {
        const c = await open(hub, await token({ sub: `prober-${s}`, elections: [e2] }), 'subscribe=none');
        for (let i = 0; i < 9; i++) {
          const topics = Array.from(
            { length: 200 },
            () => `committee:${7_000_000_000 + Math.floor(Math.random() * 1e12)}`,
          );
          named += topics.length;
          expect(await ask(c, { type: 'subscribe', topics })).toMatchObject({ type: 'error', code: 'forbidden_topic' });
        }
        await c.close();
      }
      const after = await directory();
      expect(after.entries).toBeLessThanOrEqual(after.max_entries);
      expect(after.lookups - start.lookups).toBeLessThanOrEqual(Math.ceil(named / 200));
    } finally {
      await hub.stop();
    }
  }, 120_000);
});
