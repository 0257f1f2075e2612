import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import {
  type TestClient,
  connect,
  eventsReceived,
  readPast,
  roundTrip,
  startTestHub,
  token,
  untilMarker,
  waitUntil,
} from './support/hub.ts';
import type { Hub } from '../src/main.ts';

let db: TestDatabase;
let hub: Hub;
let e1: number;
let e2: number;
let c1: number; // committee of e1
let c2: number; // other committee of e1
let c3: number; // committee of e2
const clients: TestClient[] = [];

/** A client that gets only what is written from now on (the hub has read past earlier tests' rows, which a held horizon can delay). */
const open = async (opts: Parameters<typeof connect>[1]) => {
  await readPast(hub, db.pool);
  const c = await connect(hub, opts);
  clients.push(c);
  await c.next((f) => f.type === 'connection_success');
  return c;
};

beforeAll(async () => {
  db = await createTestDatabase();
  const s = await seed(db.pool, 2, 2);
  [e1, e2] = s.elections as [number, number];
  [c1, c2] = s.committees.get(e1) as [number, number];
  [c3] = s.committees.get(e2) as [number];
  hub = await startTestHub(db.url);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await hub?.stop();
  await db?.drop();
});

describe('captured changes reach exactly the allowed dashboards', () => {
  it.each([
    ['guarantees', 'guarantee_update', `UPDATE guarantees SET status = 'confirmed' WHERE id = $1`],
    ['attendance', 'attendance_update', `UPDATE attendance SET voter_name = 'Ana' WHERE id = $1`],
    ['votes', 'voting_update', `UPDATE votes SET count = count + 5 WHERE id = $1`],
  ])(
    '%s: insert, update and delete become %s events with action, ids, data and cursor',
    async (table, type, update) => {
      const admin = await open({ token: await token({ sub: `admin-${table}`, role: 'admin' }) });
      const viewer1 = await open({ token: await token({ sub: `v1-${table}`, elections: [e1] }) });
      const committee = await open({ token: await token({ sub: `c-${table}`, committees: [c1] }) });
      const otherCommittee = await open({ token: await token({ sub: `c2-${table}`, committees: [c2] }) });
      const viewer2 = await open({ token: await token({ sub: `v2-${table}`, elections: [e2] }) });

      const ins = await db.pool.query<{ id: number }>(
        `INSERT INTO ${table} (election_id, committee_id) VALUES ($1, $2) RETURNING id`,
        [e1, c1],
      );
      const id = Number(ins.rows[0]?.id);
      await db.pool.query(update, [id]);
      await db.pool.query(`DELETE FROM ${table} WHERE id = $1`, [id]);

      for (const c of [admin, viewer1, committee]) {
        const events = (await eventsReceived(c, 3)).filter((f) => f.type === type);
        expect(events.map((f) => f.action)).toEqual(['created', 'updated', 'deleted']);
        for (const f of events) {
          expect(f).toMatchObject({ election_id: e1, committee_id: c1, id });
          expect(typeof f.cursor).toBe('string');
          expect(Number.isNaN(Date.parse(String(f.committed_at)))).toBe(false);
          expect((f.data as { id: number }).id).toBe(id);
        }
        const cursors = events.map((f) => String(f.cursor));
        expect(new Set(cursors).size).toBe(3);
      }
      const updated = (await eventsReceived(viewer1, 3)).find((f) => f.action === 'updated');
      if (table === 'votes') expect((updated?.data as { count: number }).count).toBe(5);
      if (table === 'guarantees') expect((updated?.data as { status: string }).status).toBe('confirmed');

      // The other election's dashboard and a sibling committee receive nothing.
      expect(await untilMarker(db.pool, viewer2)).toEqual([]);
      expect(await untilMarker(db.pool, otherCommittee)).toEqual([]);
      await Promise.all([admin, viewer1, committee, otherCommittee, viewer2].map((c) => c.close()));
    },
  );

  it('a socket on overlapping topics receives each event once', async () => {
    const c = await open({ token: await token({ sub: 'overlap', role: 'admin' }) });
    c.send({ type: 'subscribe', topics: [`election:${e1}`, `committee:${c1}`, 'election:*'] });
    await c.next((f) => f.type === 'subscribed');
    const v = await open({ token: await token({ sub: 'overlap2', elections: [e1], committees: [c1] }) });
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    await eventsReceived(c, 1);
    await eventsReceived(v, 1);
    expect(await untilMarker(db.pool, c)).toHaveLength(1);
    expect(await untilMarker(db.pool, v)).toHaveLength(1);
    // Unsubscribing the wider topic keeps the narrower one live.
    v.send({ type: 'unsubscribe', topics: [`election:${e1}`] });
    await v.next((f) => f.type === 'unsubscribed');
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2), ($1, $3)`, [e1, c1, c2]);
    await eventsReceived(v, 2);
    expect((await untilMarker(db.pool, v)).map((f) => f.committee_id)).toEqual([c1, c1]);
    await Promise.all([c.close(), v.close()]);
  });

  it('committee access through an election claim, and the auto-subscribed topics', async () => {
    const c = await open({ token: await token({ sub: 'via-election', elections: [e2] }) });
    expect(c.frames[0]).toMatchObject({
      type: 'connection_success',
      sub: 'via-election',
      topics: [`election:${e2}`, 'user:via-election'],
    });
    c.send({ type: 'subscribe', topics: [`committee:${c3}`] });
    expect(await c.next((f) => f.type === 'subscribed' || f.type === 'error')).toMatchObject({
      type: 'subscribed',
      topics: [`committee:${c3}`],
    });
    c.send({ type: 'subscribe', topics: [`committee:${c1}`] });
    expect(await c.next((f) => f.type === 'error')).toMatchObject({ code: 'forbidden_topic' });
    c.send({ type: 'subscribe', topics: ['election:*'] });
    expect(await c.next((f) => f.type === 'error')).toMatchObject({ code: 'forbidden_topic' });
    await c.close();
  });

  it('?subscribe=none opts out of auto-subscription', async () => {
    const c = await open({ token: await token({ sub: 'none', role: 'admin' }), query: 'subscribe=none' });
    expect(c.frames[0]).toMatchObject({ type: 'connection_success', topics: [] });
    // A socket on no topic can get no marker: an auto-subscribed one shows the row went out, then a
    // ping round trip shows that nothing published before it is still on its way to `c`.
    const observer = await open({ token: await token({ sub: 'none-observer', role: 'admin' }) });
    await db.pool.query(`INSERT INTO guarantees (election_id, committee_id) VALUES ($1, $2)`, [e1, c1]);
    await eventsReceived(observer, 1);
    await roundTrip(c);
    expect(c.events()).toEqual([]);
    await Promise.all([c.close(), observer.close()]);
  });

  it('application events from hub.publish arrive on their topic in order with the rest', async () => {
    const u = await open({ token: await token({ sub: 'alice', elections: [e1] }) });
    const other = await open({ token: await token({ sub: 'bob', elections: [e1] }) });
    await db.pool.query(`BEGIN; INSERT INTO votes (election_id, committee_id) VALUES (${e1}, ${c1});
      SELECT hub.publish('user:alice', 'note', '{"text":"hi"}'); SELECT hub.publish('committee:${c1}', 'alert', '[1,2]'); COMMIT`);
    const events = await eventsReceived(u, 3);
    expect(events.map((f) => f.type)).toEqual(['voting_update', 'note', 'alert']);
    expect(events[1]).toMatchObject({ type: 'note', topic: 'user:alice', data: { text: 'hi' } });
    expect(events[2]).toMatchObject({ type: 'alert', topic: `committee:${c1}`, data: [1, 2] });
    await eventsReceived(other, 2);
    expect((await untilMarker(db.pool, other)).map((f) => f.type)).toEqual(['voting_update', 'alert']);
    await expect(db.pool.query(`SELECT hub.publish('nope', 'x', '{}')`)).rejects.toThrow(/topic/);
    await expect(db.pool.query(`SELECT hub.publish('user:x', 'pong', '{}')`)).rejects.toThrow(/type/);
    await Promise.all([u.close(), other.close()]);
  });
});

describe('writes the hub must never break', () => {
  it('a 100 KB row is written and announced whole', async () => {
    const c = await open({ token: await token({ sub: 'big', elections: [e1] }) });
    const name = 'x'.repeat(100 * 1024);
    await db.pool.query(`INSERT INTO attendance (election_id, committee_id, voter_name) VALUES ($1, $2, $3)`, [
      e1,
      c1,
      name,
    ]);
    const [f] = await eventsReceived(c, 1);
    expect((f?.data as { voter_name: string }).voter_name).toBe(name);
    await c.close();
  });

  it('a 20 000-row INSERT ... SELECT succeeds and every row is announced in order', async () => {
    const c = await open({ token: await token({ sub: 'bulk', elections: [e2] }) });
    await db.pool.query(
      `INSERT INTO votes (election_id, committee_id, count) SELECT $1, $2, g FROM generate_series(1, 20000) g`,
      [e2, c3],
    );
    const events = await eventsReceived(c, 20_000, 60_000);
    expect(events).toHaveLength(20_000);
    expect(events.map((f) => (f.data as { count: number }).count)).toEqual(
      Array.from({ length: 20_000 }, (_, i) => i + 1),
    );
    await c.close();
  });

  it('an INSERT naming only election_id and committee_id succeeds on every event table', async () => {
    for (const t of ['guarantees', 'attendance', 'votes']) {
      await expect(db.pool.query(`INSERT INTO ${t} (election_id, committee_id) VALUES (1, 1)`)).resolves.toBeDefined();
    }
  });

  it('hub.watch installs capture on any table with custom columns', async () => {
    await db.pool.query(
      `CREATE TABLE complaints (pk bigint generated always as identity primary key, eid bigint, cid bigint, body text)`,
    );
    await db.pool.query(`SELECT hub.watch('complaints', 'complaint', 'eid', 'cid')`);
    const c = await open({ token: await token({ sub: 'watch', elections: [e1] }) });
    await db.pool.query(
      `INSERT INTO complaints (eid, cid, body) VALUES ($1, $2, 'late opening'), ('${e1}', NULL, 'no committee')`,
      [e1, c1],
    );
    const events = await eventsReceived(c, 2);
    expect(events[0]).toMatchObject({ type: 'complaint_update', action: 'created', election_id: e1, committee_id: c1 });
    expect(events[1]).toMatchObject({ type: 'complaint_update', election_id: e1, committee_id: null });
    await c.close();
  });
});

describe('client frames', () => {
  it('ping/pong, bad JSON, unknown type, bad topic, forbidden topic: answered and the socket stays usable', async () => {
    const c = await open({ token: await token({ sub: 'frames', elections: [e1] }) });
    const answers: string[] = [];
    // A dashboard_update of election e1 (changed by earlier tests) may arrive at any time: not an answer.
    const replies = () => c.frames.filter((f) => f.type !== 'dashboard_update');
    for (const f of [
      '{"type":"ping"}',
      'not json',
      '{"type":"dance"}',
      '{"type":"subscribe","topics":["bogus"]}',
      `{"type":"subscribe","topics":["election:${e2}"]}`,
      '{"type":"subscribe"}',
      '{"type":"ping"}',
    ]) {
      const before = replies().length;
      c.send(f);
      await waitUntil(() => replies().length > before, 5000, `answer to ${f}`);
      const last = replies()[replies().length - 1];
      answers.push(last?.type === 'error' ? `error:${String(last.code)}` : String(last?.type));
    }
    expect(answers).toEqual([
      'pong',
      'error:bad_json',
      'error:unknown_type',
      'error:bad_topic',
      'error:forbidden_topic',
      'error:bad_frame',
      'pong',
    ]);
    await c.close();
  });

  it('a client that keeps misbehaving is closed with 1008', async () => {
    const c = await open({ token: await token({ sub: 'pest', elections: [e1] }) });
    for (let i = 0; i < 12; i++) c.send('garbage');
    expect((await c.closed).code).toBe(1008);
  });

  it('a frame over MAX_PAYLOAD_BYTES closes with 1009', async () => {
    const c = await open({ token: await token({ sub: 'huge', elections: [e1] }) });
    c.send(JSON.stringify({ type: 'subscribe', topics: ['x'.repeat(20_000)] }));
    expect((await c.closed).code).toBe(1009);
  });
});
