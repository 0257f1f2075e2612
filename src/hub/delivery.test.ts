import fc from 'fast-check';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { FIRST_SEQ, type Position, encodeCursor } from '../events/position.ts';
import type { OutboxEvent } from '../events/event.ts';
import { createHistory, decodeRow } from '../db/outbox.ts';
import { type Claims, type Id, ALL, mayUse, parseTopic, receives } from '../events/topics.ts';
import { CloseCode } from '../errors.ts';
import { createLogger } from '../log.ts';
import { createMetrics } from '../metrics/index.ts';
import {
  CursorError,
  type PositionSource,
  type Publisher,
  type Sock,
  UnavailableError,
  createDelivery,
} from './delivery.ts';
import { type Session, createSession, markClosed } from './session.ts';
import { createRing } from './ring.ts';

// The delivery seam against fakes: uWS topics modelled by a map (a message published on a
// topic reaches each subscribed socket once per topic, as uWS does), sockets that record what
// they were sent and subscribed, a fake pool for the replay's reads.

const KB = 1024;
const MB = 1024 * 1024;
// A commit key (legacy positions below FIRST_SEQ are checked against the database).
const SEQ = FIRST_SEQ + 100n;

/** An outbox row as PostgreSQL returns it (src/db/outbox.ts COLUMNS). */
const raw = (
  id: number,
  r: { election?: Id | null; committee?: Id | null; topic?: string | null; kind?: string; pad?: number } = {},
) => ({
  seq: String(SEQ),
  id: String(id),
  kind: r.kind ?? 'guarantee',
  action: r.kind === 'app' ? 'note' : 'created',
  topic: r.topic ?? null,
  election_id: r.election === undefined ? '1' : r.election,
  committee_id: r.committee === undefined ? '7' : r.committee,
  row_id: String(id),
  data: r.pad ? JSON.stringify({ pad: 'x'.repeat(r.pad) }) : '{}',
  committed_ms: 1_700_000_000_000,
});
const ev = (...args: Parameters<typeof raw>): OutboxEvent => decodeRow(raw(...args)) as OutboxEvent;
const at = (id: number): Position => ({ seq: SEQ, id: BigInt(id) });
const cursorOf = (frame: string) => /"cursor":"([^"]+)"/.exec(frame)?.[1];

type Op =
  | ['send', string]
  | ['subscribe', string]
  | ['unsubscribe', string]
  | ['end', number | undefined]
  | ['live', string, boolean];

type FakeSock = Sock & {
  session: Session;
  /** Everything done to the socket, in order. */
  log: Op[];
  frames: string[];
  buffered: number;
  /** A stalled client reads nothing: uWS keeps all of it. A healthy one keeps none. */
  stalled: boolean;
  code: number | undefined;
  maxSeen: number;
};

function fakeHub(
  opts: {
    maxBuffered?: number;
    maxTotalBuffered?: number;
    ring?: { events: number; bytes: number };
    reader?: Partial<PositionSource>;
    pool?: Pick<pg.Pool, 'query'>;
    electionOf?: (c: Id) => Id | null | undefined;
  } = {},
) {
  const sockets = new Set<FakeSock>();
  const topics = new Map<string, Set<FakeSock>>();
  // What the open sockets buffer together, and its highest value at any send.
  const total = { now: 0, peak: 0 };
  const publisher: Publisher = {
    publish(topic, message) {
      for (const ws of topics.get(topic) ?? []) ws.send(message);
      return true;
    },
    numSubscribers: (topic) => topics.get(topic)?.size ?? 0,
  };
  let head: Position | undefined = at(0);
  const reader: PositionSource = {
    position: () => head,
    waitFor: async () => true,
    failing: () => false,
    ...opts.reader,
  };
  let nextId = 1;
  const socket = (c: Partial<Claims> = { role: 'admin' }, stalled = false): FakeSock => {
    const session: Session = createSession({
      id: nextId++,
      claims: { sub: `s${nextId}`, role: undefined, elections: [], committees: [], exp: undefined, ...c },
      remote: '127.0.0.1',
      lease: { release: () => undefined },
      autoSubscribe: false,
    });
    const ws: FakeSock = {
      session,
      log: [],
      frames: [],
      buffered: 0,
      stalled,
      code: undefined,
      maxSeen: 0,
      send(message: string) {
        ws.log.push(['send', message]);
        ws.frames.push(message);
        if (ws.stalled) {
          ws.buffered += message.length;
          total.now += message.length;
          total.peak = Math.max(total.peak, total.now);
        }
        ws.maxSeen = Math.max(ws.maxSeen, ws.buffered);
        return 1;
      },
      getBufferedAmount: () => ws.buffered,
      subscribe(t: string) {
        if (!t.startsWith('d:')) ws.log.push(['subscribe', t]); // d:E carries dashboard frames only
        let set = topics.get(t);
        if (!set) topics.set(t, (set = new Set()));
        const added = !set.has(ws);
        set.add(ws);
        return added;
      },
      unsubscribe(t: string) {
        if (!t.startsWith('d:')) ws.log.push(['unsubscribe', t]);
        return topics.get(t)?.delete(ws) ?? false;
      },
      end(code?: number) {
        // As in uWS: the close handler runs inside end(); the socket leaves every topic.
        ws.log.push(['end', code]);
        ws.code = code;
        total.now -= ws.buffered;
        markClosed(session);
        for (const set of topics.values()) set.delete(ws);
        sockets.delete(ws);
        delivery.closed(ws);
      },
      getUserData: () => session,
    };
    sockets.add(ws);
    return ws;
  };
  const metrics = createMetrics();
  const ring = createRing(opts.ring ?? { events: 100_000, bytes: 64 * MB });
  ring.init(at(0));
  const delivery = createDelivery({
    publisher,
    reader,
    // Only a replay the ring cannot cover reads it.
    history: createHistory(
      (opts.pool ?? { query: () => Promise.reject(new Error('no database in unit tests')) }) as pg.Pool,
    ),
    ring,
    electionOf: opts.electionOf ?? (() => undefined),
    sockets,
    maxBuffered: opts.maxBuffered ?? 1 * MB,
    maxTotalBuffered: opts.maxTotalBuffered ?? 256 * MB,
    metrics,
    log: createLogger('silent'),
  });
  const value = async (name: string, labels: Record<string, string>) =>
    (await metrics.registry.getSingleMetric(name)?.get())?.values.find((v) =>
      Object.entries(labels).every(([k, x]) => v.labels[k] === x),
    )?.value ?? 0;
  /** Subscribes without `since`: synchronous (no read), like the server's subscribe frame. */
  const live = (ws: FakeSock, t: string[]) =>
    delivery.subscribe(ws, t, undefined, (cursor, resync) => ws.log.push(['live', encodeCursor(cursor), resync]));
  return {
    delivery,
    socket,
    sockets,
    topics,
    total,
    ring,
    value,
    live,
    closes: (cause: string) => value('hub_slow_reader_closes_total', { cause }),
    setHead: (p: Position | undefined) => (head = p),
  };
}

describe('live fan-out', () => {
  it('publishes each event once per uWS topic and counts frames and bytes times receivers', async () => {
    const hub = fakeHub();
    const admin = hub.socket({ role: 'admin' });
    const e1 = hub.socket({ elections: ['1'] });
    const c7 = hub.socket({ committees: ['7'] });
    const other = hub.socket({ elections: ['2'] });
    await hub.live(admin, [ALL]);
    await hub.live(e1, ['election:1']);
    await hub.live(c7, ['committee:7']);
    await hub.live(other, ['election:2']);
    const events = [ev(1), ev(2, { committee: '8' }), ev(3, { election: '2', committee: '9' })];
    hub.delivery.publish(events);
    const cursors = (ws: FakeSock) => ws.frames.map(cursorOf);
    expect(cursors(admin)).toEqual(events.map((e) => e.cursor));
    expect(cursors(e1)).toEqual([events[0]?.cursor, events[1]?.cursor]);
    expect(cursors(c7)).toEqual([events[0]?.cursor]);
    expect(cursors(other)).toEqual([events[2]?.cursor]);
    // 3 + 3 + 2 receivers; bytes: each frame's size times its receivers.
    expect(await hub.value('hub_messages_sent_total', { type: 'guarantee_update' })).toBe(7);
    const size = (e: OutboxEvent | undefined) => Buffer.byteLength(e?.frame ?? '');
    expect(await hub.value('hub_bytes_sent_total', { type: 'guarantee_update' })).toBe(
      3 * size(events[0]) + 2 * size(events[1]) + 2 * size(events[2]),
    );
    expect(await hub.value('hub_events_total', { kind: 'guarantee', action: 'created' })).toBe(3);
    // Every published event is in the ring, for resumes.
    expect(hub.ring.size().events).toBe(3);
    expect(await hub.value('hub_replay_buffer_events', {})).toBe(3);
  });

  it('an application event counts as app_event (its type is the application’s own text)', async () => {
    const hub = fakeHub();
    const ws = hub.socket({ sub: 'ana' });
    await hub.live(ws, ['user:ana']);
    hub.delivery.publish([ev(1, { kind: 'app', topic: 'user:ana', election: null, committee: null })]);
    expect(ws.frames).toHaveLength(1);
    expect(JSON.parse(ws.frames[0] as string)).toMatchObject({ type: 'note', topic: 'user:ana' });
    expect(await hub.value('hub_messages_sent_total', { type: 'app_event' })).toBe(1);
    expect(await hub.value('hub_messages_sent_total', { type: 'other' })).toBe(0);
  });

  it('publishFrame (dashboard updates) reaches live subscribers only and is counted once per receiver', async () => {
    const hub = fakeHub();
    const a = hub.socket();
    const b = hub.socket();
    await hub.live(a, ['election:1']);
    await hub.live(b, ['election:1']);
    hub.delivery.publishFrame(['election:1'], '{"type":"dashboard_update"}', 'dashboard_update');
    hub.delivery.publishFrame(['election:9'], '{"type":"dashboard_update"}', 'dashboard_update');
    expect(a.frames).toEqual(['{"type":"dashboard_update"}']);
    expect(b.frames).toEqual(['{"type":"dashboard_update"}']);
    expect(await hub.value('hub_messages_sent_total', { type: 'dashboard_update' })).toBe(2);
    expect(hub.ring.size().events).toBe(0);
  });
});

describe('covers', () => {
  it('a socket subscribes the cover of its topics, in which no two overlap; unsubscribing recomputes it', async () => {
    const hub = fakeHub({ electionOf: (c) => (c === '7' ? '1' : undefined) });
    const ws = hub.socket({ role: 'admin' });
    await hub.live(ws, ['election:1', 'committee:7', 'committee:8']);
    // committee:7 is inside election:1; committee:8's election is not known before a row.
    expect(rowTopics(ws.session.cover)).toEqual(new Set(['election:1']));
    hub.delivery.unsubscribe(ws, ['election:1']);
    expect(rowTopics(ws.session.cover)).toEqual(new Set(['c:1:7']));
    expect(ws.log.filter(([op]) => op !== 'live')).toEqual([
      ['subscribe', 'election:1'],
      ['unsubscribe', 'election:1'],
      ['subscribe', 'c:1:7'],
    ]);
    await hub.live(ws, [ALL]);
    expect(rowTopics(ws.session.cover)).toEqual(new Set([ALL]));
    // Overlapping topics: each event once.
    hub.delivery.publish([ev(1), ev(2, { committee: '8' })]);
    expect(ws.frames.map(cursorOf)).toEqual([encodeCursor(at(1)), encodeCursor(at(2))]);
  });

  it('a committee whose rows change election re-targets its sockets before the row goes out: rights at the time of the row', async () => {
    const hub = fakeHub({ electionOf: () => '1' });
    const viaElection = hub.socket({ elections: ['1'] });
    const viaCommittee = hub.socket({ committees: ['7'] });
    await hub.live(viaElection, ['committee:7']);
    await hub.live(viaCommittee, ['committee:7']);
    hub.delivery.publish([ev(1), ev(2, { election: '2' }), ev(3)]);
    expect(viaElection.frames.map(cursorOf)).toEqual([encodeCursor(at(1)), encodeCursor(at(3))]);
    expect(viaCommittee.frames.map(cursorOf)).toEqual([1, 2, 3].map((n) => encodeCursor(at(n))));
    expect(viaCommittee.session.cover).toEqual(new Set(['c:1:7']));
  });

  it('a socket that unsubscribed a committee is not moved with it', async () => {
    const hub = fakeHub();
    const ws = hub.socket({ committees: ['7'] });
    await hub.live(ws, ['committee:7']);
    hub.delivery.publish([ev(1)]);
    hub.delivery.unsubscribe(ws, ['committee:7']);
    hub.delivery.publish([ev(2, { election: '2' }), ev(3)]);
    expect(ws.frames.map(cursorOf)).toEqual([encodeCursor(at(1))]);
    expect(rowTopics(ws.session.cover)).toEqual(new Set());
  });

  /*
   * The incremental cover (follow / retarget in delivery.ts) against the rule: random sockets
   * with random claims open, subscribe what they may use, unsubscribe, close, while rows of
   * committees that move between elections are published. After every row, each open socket
   * got it once if `receives` says so, else not at all.
   */
  it('(property) each row reaches a live socket at most once, exactly when `receives` says so', async () => {
    // Few ids, so that sockets share committees and committees move often.
    const E = ['1', '2', '3'];
    const C = ['10', '11'];
    const arbClaims = fc.record({
      sub: fc.constantFrom('ana', 'bob'),
      role: fc.constantFrom(undefined, 'admin'),
      elections: fc.uniqueArray(fc.constantFrom(...E), { maxLength: 2 }),
      committees: fc.uniqueArray(fc.constantFrom(...C), { maxLength: 2 }),
    });
    const arbTopics = fc.uniqueArray(
      fc.oneof(
        fc.constant(ALL),
        fc.constantFrom(...E).map((e) => `election:${e}`),
        fc.constantFrom(...C).map((c) => `committee:${c}`),
        fc.constantFrom('user:ana', 'user:bob'),
      ),
      { minLength: 1, maxLength: 3 },
    );
    const arbRow = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.record({
          election: fc.option(fc.constantFrom(...E), { freq: 8 }),
          committee: fc.option(fc.constantFrom(...C), { freq: 8 }),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          topic: fc.constantFrom('user:ana', 'user:bob'),
          election: fc.constant(null),
          committee: fc.constant(null),
          kind: fc.constant('app'),
        }),
      },
    );
    const arbOp = fc.oneof(
      { weight: 2, arbitrary: arbClaims.map((claims) => ({ op: 'open' as const, claims })) },
      {
        weight: 3,
        arbitrary: fc.record({ op: fc.constant('subscribe' as const), socket: fc.nat(), topics: arbTopics }),
      },
      {
        weight: 2,
        arbitrary: fc.record({ op: fc.constant('unsubscribe' as const), socket: fc.nat(), topics: arbTopics }),
      },
      { weight: 1, arbitrary: fc.record({ op: fc.constant('close' as const), socket: fc.nat() }) },
      {
        weight: 6,
        arbitrary: fc.record({
          op: fc.constant('publish' as const),
          rows: fc.array(arbRow, { minLength: 1, maxLength: 3 }),
        }),
      },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.constantFrom(...C), fc.constantFrom(...E)),
        fc.array(arbOp, { minLength: 1, maxLength: 40 }),
        async (directory, ops) => {
          const electionOf = (c: Id) => directory[c] ?? null;
          const hub = fakeHub({ electionOf });
          const open: FakeSock[] = [];
          let n = 0;
          for (const o of ops) {
            if (o.op === 'open') open.push(hub.socket(o.claims));
            else if (o.op === 'publish') {
              const events = o.rows.map((r) => ev(++n, r));
              const before = open.map((ws) => ws.frames.length);
              hub.delivery.publish(events);
              open.forEach((ws, i) => {
                const got = ws.frames.slice(before[i]).map(cursorOf);
                const want = events
                  .filter((e) => receives(ws.session.claims, ws.session.topics, e))
                  .map((e) => e.cursor);
                expect(
                  got,
                  JSON.stringify({ claims: ws.session.claims, topics: [...ws.session.topics], rows: o.rows }),
                ).toEqual(want);
              });
            } else {
              const ws = open[o.socket % Math.max(1, open.length)];
              if (!ws) continue;
              if (o.op === 'close') {
                ws.end(1000);
                open.splice(open.indexOf(ws), 1);
              } else if (o.op === 'unsubscribe') hub.delivery.unsubscribe(ws, o.topics);
              else {
                // Admission as the server does it: only topics the claims may use.
                const ok = o.topics.filter((t) =>
                  mayUse(ws.session.claims, parseTopic(t) as NonNullable<ReturnType<typeof parseTopic>>, electionOf),
                );
                if (ok.length > 0) await hub.live(ws, ok);
              }
            }
          }
        },
      ),
      { numRuns: 1500 },
    );
  });
});

describe('buffer limits', () => {
  it('a reply that takes a socket over MAX_BACKPRESSURE_BYTES closes it with 4008', async () => {
    const hub = fakeHub({ maxBuffered: 10 * KB });
    const ws = hub.socket({}, true);
    expect(hub.delivery.send(ws, 'x'.repeat(8 * KB), 'pong')).toBe(true);
    expect(hub.delivery.send(ws, 'x'.repeat(4 * KB), 'pong')).toBe(false);
    expect(ws.code).toBe(CloseCode.tooSlow);
    expect(hub.delivery.send(ws, '{}', 'pong')).toBe(false); // closed: nothing more is sent
    expect(ws.frames).toHaveLength(2);
    expect(await hub.closes('socket_limit')).toBe(1);
  });

  it('a socket that stops reading is closed with 4008 while a large batch is still being published, not after it', async () => {
    const hub = fakeHub({ maxBuffered: 1 * MB, maxTotalBuffered: 256 * MB });
    const stalled = [hub.socket({}, true), hub.socket({}, true), hub.socket({}, true)];
    const healthy = hub.socket({}, false);
    for (const ws of [...stalled, healthy]) await hub.live(ws, ['election:1']);
    // One page: 200 rows of 100 KB (20 MB), published in one call.
    hub.delivery.publish(Array.from({ length: 200 }, (_, i) => ev(i + 1, { pad: 100 * KB })));
    for (const ws of stalled) {
      expect(ws.code).toBe(4008);
      // Closed within about one frame of its limit, not with the whole batch buffered.
      expect(ws.maxSeen).toBeLessThanOrEqual(1 * MB + 2 * 100 * KB + 2 * KB);
    }
    expect(healthy.code).toBe(undefined);
    expect(healthy.frames).toHaveLength(200);
    expect(await hub.closes('socket_limit')).toBe(3);
    expect(await hub.closes('global_budget')).toBe(0);
  });

  it('past the global budget the most buffered sockets are closed first, until the rest fits', async () => {
    const hub = fakeHub({ maxBuffered: 64 * MB, maxTotalBuffered: 4 * MB });
    // Six stalled sockets on their own topics, given 3, 2.5, 2, 1.5, 1 and 0.5 MB.
    const mbs = [3, 2.5, 2, 1.5, 1, 0.5];
    const socks = mbs.map(() => hub.socket({}, true));
    for (const [i, ws] of socks.entries()) await hub.live(ws, [`committee:${i + 1}`]);
    mbs.forEach((mb, i) => ((socks[i] as FakeSock).buffered = mb * MB));
    hub.total.now = 10.5 * MB;
    hub.delivery.publishFrame(['committee:1'], '{}', 'dashboard_update'); // something was sent: the sweep looks
    hub.delivery.sweep();
    // 10.5 MB buffered: closing the three largest leaves 3 MB, under the 4 MB budget.
    expect(socks.map((s) => s.code ?? 0)).toEqual([4008, 4008, 4008, 0, 0, 0]);
    expect(await hub.closes('global_budget')).toBe(3);
    expect(hub.delivery.memory().buffered).toBe(3 * MB);
  });

  it('the global budget is enforced during a batch: 50 stalled sockets never hold much more than it together', async () => {
    const hub = fakeHub({ maxBuffered: 64 * MB, maxTotalBuffered: 8 * MB });
    const socks = Array.from({ length: 50 }, () => hub.socket({}, true));
    for (const ws of socks) await hub.live(ws, ['election:1']);
    // One page of 100 rows of 100 KB: 10 MB, 500 MB once fanned out to the 50 sockets.
    hub.delivery.publish(Array.from({ length: 100 }, (_, i) => ev(i + 1, { pad: 100 * KB })));
    // Checked whenever budget/16 was fanned out since the last check (after a large frame):
    // the overshoot is at most that slice plus one event's fan-out.
    expect(hub.total.peak).toBeLessThanOrEqual(8 * MB + (8 * MB) / 16 + 50 * (100 * KB + 2 * KB));
    expect(socks.every((s) => s.code === 4008)).toBe(true);
    expect(await hub.closes('global_budget')).toBe(50);
  });

  it('an idle hub does not walk its sockets: the sweep only looks after something was sent', () => {
    const hub = fakeHub({ maxBuffered: 1 * KB });
    const ws = hub.socket({}, true);
    ws.buffered = 2 * KB; // over its limit, but nothing was sent since the last sweep
    hub.delivery.sweep(); // the first sweep: nothing published yet
    expect(ws.code).toBe(undefined);
    hub.delivery.publishFrame(['nobody'], '{}', 'dashboard_update');
    hub.delivery.sweep();
    expect(ws.code).toBe(4008);
  });
});

describe('resume (subscribe with since)', () => {
  const since = (hub: ReturnType<typeof fakeHub>, ws: FakeSock, topics: string[], p: Position) =>
    hub.delivery.subscribe(ws, topics, p, (cursor, resync) => ws.log.push(['live', encodeCursor(cursor), resync]));

  it('from the ring: the missed events, filtered by the rule, then the subscription, in one synchronous step', async () => {
    const hub = fakeHub();
    const events = [ev(1), ev(2, { election: '2' }), ev(3), ev(4, { committee: '8' })];
    hub.delivery.publish(events);
    hub.setHead(at(4));
    const ws = hub.socket({ elections: ['1'] });
    const done = since(hub, ws, ['election:1'], at(1));
    // Before any other task or microtask could publish: the replay was sent and the socket is
    // live, so no event can fall between the two.
    expect(ws.log).toEqual([
      ['send', events[2]?.frame],
      ['send', events[3]?.frame],
      ['subscribe', 'election:1'],
      ['live', encodeCursor(at(4)), false],
    ]);
    await done;
    hub.delivery.publish([ev(5)]);
    expect(ws.frames.map(cursorOf)).toEqual([3, 4, 5].map((n) => encodeCursor(at(n))));
  });

  it('the socket’s other topics are paused during the replay and resumed where they were: no gap, no repeat', async () => {
    let release: ((rows: unknown[]) => void) | undefined;
    const pool = {
      query(q: string | { name?: string }) {
        if (typeof q === 'string') return Promise.resolve({ rows: [{ t: '0', i: '0' }] });
        return new Promise((resolve) => (release = (rows) => resolve({ rows })));
      },
    } as unknown as pg.Pool;
    const hub = fakeHub({ pool, ring: { events: 2, bytes: MB } });
    const ws = hub.socket({ role: 'admin' });
    await hub.live(ws, ['election:2']);
    hub.delivery.publish([ev(1), ev(2, { election: '2' }), ev(3)]); // ws gets 2 live
    hub.setHead(at(3));
    const done = since(hub, ws, ['election:1'], at(0));
    expect(rowTopics(ws.session.cover)).toEqual(new Set()); // paused while PostgreSQL is read
    hub.delivery.publish([ev(4, { election: '2' })]); // for election:2, published meanwhile
    await Promise.resolve();
    release?.([raw(1), raw(2, { election: '2' }), raw(3)]);
    await done;
    hub.delivery.publish([ev(5, { election: '2' })]);
    expect(ws.frames.map(cursorOf)).toEqual([2, 1, 3, 4, 5].map((n) => encodeCursor(at(n))));
    expect(rowTopics(ws.session.cover)).toEqual(new Set(['election:1', 'election:2']));
  });

  it('from PostgreSQL, then the ring: what was published while a page was read comes from the ring, once', async () => {
    let release: ((rows: unknown[]) => void) | undefined;
    const queries: string[] = [];
    const pool = {
      query(q: string | { name?: string; text: string }) {
        // The replay's statement is unnamed (planned at every run): known by what it reads.
        const name =
          typeof q === 'string' ? 'pruned' : (q.name ?? (q.text.includes('FROM hub.commits') ? 'range' : ''));
        queries.push(name);
        if (name === 'range') return new Promise((resolve) => (release = (rows) => resolve({ rows })));
        return Promise.resolve({ rows: [{ t: '0', i: '0' }] });
      },
    } as unknown as pg.Pool;
    // A ring of 2 events: a resume from 0 after 3 events must read PostgreSQL first.
    const hub = fakeHub({ pool, ring: { events: 2, bytes: MB } });
    hub.delivery.publish([ev(1), ev(2), ev(3)]);
    hub.setHead(at(3));
    const ws = hub.socket({ role: 'admin' });
    const done = since(hub, ws, [ALL], at(0));
    expect(ws.log).toEqual([]); // paused, reading
    hub.delivery.publish([ev(4)]); // not subscribed yet: goes to the ring only
    expect(ws.frames).toEqual([]);
    await Promise.resolve();
    release?.([raw(1), raw(2), raw(3)]);
    await done;
    hub.delivery.publish([ev(5)]);
    expect(ws.frames.map(cursorOf)).toEqual([1, 2, 3, 4, 5].map((n) => encodeCursor(at(n))));
    expect(ws.log.findIndex((o) => o[0] === 'subscribe')).toBe(4); // after 1-4, before 5
    expect(queries).toEqual(['range', 'pruned']);
  });

  it('a since older than the retention goes live at once with resync', async () => {
    const hub = fakeHub();
    hub.delivery.setPruned(at(5));
    hub.setHead(at(9));
    const ws = hub.socket();
    await since(hub, ws, ['election:1'], at(3));
    expect(ws.log).toEqual([
      ['subscribe', 'election:1'],
      ['live', encodeCursor(at(9)), true],
    ]);
  });

  it('a cursor ahead of the outbox, with a reader that reads, is not one this hub issued: CursorError (bad_cursor)', async () => {
    const hub = fakeHub({ reader: { waitFor: async () => false, failing: () => false } });
    const ws = hub.socket();
    await expect(since(hub, ws, ['election:1'], at(50))).rejects.toBeInstanceOf(CursorError);
    expect(ws.code).toBe(undefined);
  });

  it('a subscribe without since on a hub not reading yet: UnavailableError (unavailable)', async () => {
    const hub = fakeHub();
    hub.setHead(undefined);
    const ws = hub.socket();
    await expect(hub.live(ws, ['election:1'])).rejects.toBeInstanceOf(UnavailableError);
  });

  describe('a replay that cannot be completed closes with 4009 and never subscribes', () => {
    const expectResumeFailed = (ws: FakeSock) => {
      expect(ws.log.filter(([op]) => op === 'subscribe' || op === 'live')).toEqual([]);
      expect(ws.log.at(-1)).toEqual(['end', CloseCode.resumeFailed]);
    };

    it('the hub is not reading the outbox yet', async () => {
      const hub = fakeHub();
      hub.setHead(undefined);
      const ws = hub.socket();
      await since(hub, ws, [ALL], at(1));
      expectResumeFailed(ws);
    });

    it('the cursor is ahead and the reader is failing', async () => {
      const hub = fakeHub({ reader: { waitFor: async () => false, failing: () => true } });
      const ws = hub.socket();
      await since(hub, ws, [ALL], at(50));
      expectResumeFailed(ws);
    });

    it('the PostgreSQL read fails', async () => {
      const hub = fakeHub({ ring: { events: 1, bytes: MB } });
      hub.delivery.publish([ev(1), ev(2)]);
      hub.setHead(at(2));
      const ws = hub.socket();
      await since(hub, ws, [ALL], at(0));
      expectResumeFailed(ws);
      expect(ws.frames).toEqual([]);
    });

    it('the read fails after a first page: that page was delivered in order, then 4009', async () => {
      let reads = 0;
      const pool = {
        query(q: string | { name?: string }) {
          if (typeof q === 'string') return Promise.resolve({ rows: [{ t: '0', i: '0' }] });
          if (++reads === 2) return Promise.reject(new Error('Connection terminated unexpectedly'));
          return Promise.resolve({ rows: Array.from({ length: 1000 }, (_, i) => raw(i + 1)) });
        },
      } as unknown as pg.Pool;
      const hub = fakeHub({ pool, ring: { events: 1, bytes: MB } });
      hub.ring.push(ev(3000));
      hub.ring.push(ev(3001));
      hub.setHead(at(3001));
      const ws = hub.socket();
      await since(hub, ws, [ALL], at(0));
      expect(reads).toBe(2);
      expect(ws.frames.map(cursorOf)).toEqual(Array.from({ length: 1000 }, (_, i) => encodeCursor(at(i + 1))));
      expectResumeFailed(ws);
    });
  });
});

/** The cover without the dashboard channels d:E (they carry dashboard_update frames, never rows). */
function rowTopics(cover: ReadonlySet<string>): Set<string> {
  return new Set([...cover].filter((t) => !t.startsWith('d:')));
}
