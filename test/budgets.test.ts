import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createRing } from '../src/hub/ring.ts';
import { createDelivery, type Publisher, type Session, type Sock } from '../src/hub/delivery.ts';
import type { HubEvent } from '../src/db/outbox.ts';
import { type Position, encodeCursor } from '../src/db/cursor.ts';
import { createMetrics } from '../src/metrics/index.ts';
import { createLogger } from '../src/log.ts';

// Pure logic of the memory budgets (no database, no uWS): the replay ring by bytes, and the
// buffer checks of the live fan-out against sockets that stop reading.

const KB = 1024;
const MB = 1024 * 1024;

const event = (n: number, frameBytes: number, topics: readonly string[] = ['election:1']): HubEvent => {
  const pos: Position = { txid: 100n, id: BigInt(n) };
  const cursor = encodeCursor(pos);
  const head = `{"type":"guarantee_update","n":${n},"pad":"`;
  const tail = `","cursor":"${cursor}"}`;
  return {
    pos,
    cursor,
    kind: 'guarantee',
    action: 'created',
    type: 'guarantee_update',
    electionId: '1',
    committeeId: '1',
    topic: null,
    topics,
    frame: head + 'x'.repeat(Math.max(0, frameBytes - head.length - tail.length)) + tail,
    committedAtMs: Date.now(),
    count: null,
    old: null,
  };
};
const ids = (events: Iterable<HubEvent>) => [...events].map((e) => Number(e.pos.id));

describe('replay ring', () => {
  it('is bounded by the bytes of its frames; it still holds every event above its floor', () => {
    const ring = createRing({ events: 1000, bytes: 5 * KB });
    ring.init({ txid: 100n, id: 0n });
    for (let n = 1; n <= 10; n++) ring.push(event(n, KB));
    expect(ring.size()).toEqual({ events: 5, bytes: 5 * KB });
    // Events 1..5 were evicted: the floor is event 5, and everything above it is here.
    expect(ring.covers({ txid: 100n, id: 5n })).toBe(true);
    expect(ring.covers({ txid: 100n, id: 4n })).toBe(false);
    expect(ids(ring.after({ txid: 100n, id: 5n }))).toEqual([6, 7, 8, 9, 10]);
    expect(ids(ring.after({ txid: 100n, id: 8n }))).toEqual([9, 10]);
  });

  it('keeps its event bound too, and keeps nothing of an event larger than its whole byte budget', () => {
    const ring = createRing({ events: 3, bytes: 10 * KB });
    ring.init({ txid: 100n, id: 0n });
    for (let n = 1; n <= 5; n++) ring.push(event(n, 100));
    expect(ring.size().events).toBe(3);
    expect(ids(ring.after({ txid: 100n, id: 2n }))).toEqual([3, 4, 5]);
    ring.push(event(6, 20 * KB));
    expect(ring.size()).toEqual({ events: 0, bytes: 0 });
    // A resume from before event 6 must come from PostgreSQL; from event 6 on, the ring covers.
    expect(ring.covers({ txid: 100n, id: 5n })).toBe(false);
    expect(ring.covers({ txid: 100n, id: 6n })).toBe(true);
    expect(ids(ring.after({ txid: 100n, id: 6n }))).toEqual([]);
  });

  it('releases an evicted event at once (nothing keeps its frame alive)', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const ring = createRing({ events: 1000, bytes: 2 * MB });
    ring.init({ txid: 100n, id: 0n });
    const refs: Array<WeakRef<HubEvent>> = [];
    // Built in a function of its own, so no local variable of this test keeps one alive.
    const fill = (from: number, to: number) => {
      for (let n = from; n <= to; n++) {
        const e = event(n, 100 * KB);
        refs.push(new WeakRef(e));
        ring.push(e);
      }
    };
    fill(1, 30); // 3 MB into a 2 MB ring: about the first ten are evicted
    await new Promise((r) => setImmediate(r));
    gc();
    const held = ring.size().events;
    expect(held).toBeLessThan(30);
    expect(refs.slice(0, 30 - held).filter((r) => r.deref() !== undefined)).toHaveLength(0);
    expect(refs.slice(30 - held).every((r) => r.deref() !== undefined)).toBe(true);
  });
});

// ---- the live fan-out's buffer checks, against fake sockets --------------------------------

type FakeSock = Sock & { buffered: number; code: number | undefined; maxSeen: number; stalled: boolean; closedAt: number | undefined };

function fakeHub(opts: { maxBuffered: number; maxTotalBuffered: number }) {
  const sockets = new Set<FakeSock>();
  const topics = new Map<string, Set<FakeSock>>();
  let published = 0;
  // What the open sockets buffer together, and its highest value at any send.
  const total = { now: 0, peak: 0 };
  const publisher: Publisher = {
    publish(topic, message) {
      for (const ws of topics.get(topic) ?? []) ws.send(message);
      return true;
    },
    numSubscribers: (topic) => topics.get(topic)?.size ?? 0,
  };
  const socket = (stalled: boolean, topic = 'election:1'): FakeSock => {
    const session = { id: sockets.size + 1, claims: { sub: `s${sockets.size}` }, closed: false } as unknown as Session;
    const ws: FakeSock = {
      buffered: 0,
      code: undefined,
      maxSeen: 0,
      stalled,
      closedAt: undefined,
      send(message: string) {
        published += message.length;
        // A stalled client reads nothing: uWS keeps all of it. A healthy one keeps none.
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
        let set = topics.get(t);
        if (!set) topics.set(t, (set = new Set()));
        set.add(ws);
        return true;
      },
      unsubscribe: (t: string) => topics.get(t)?.delete(ws) ?? false,
      end(code?: number) {
        // As in uWS: the close handler runs inside end(); the socket leaves every topic.
        ws.code = code;
        ws.closedAt = published;
        total.now -= ws.buffered;
        session.closed = true;
        for (const set of topics.values()) set.delete(ws);
        sockets.delete(ws);
      },
      getUserData: () => session,
    };
    ws.subscribe(topic);
    sockets.add(ws);
    return ws;
  };
  const metrics = createMetrics();
  const ring = createRing({ events: 100_000, bytes: 64 * MB });
  ring.init({ txid: 100n, id: 0n });
  const delivery = createDelivery({
    publisher,
    reader: { position: () => ({ txid: 100n, id: 0n }), waitFor: async () => true, failing: () => false },
    pool: {} as pg.Pool,
    ring,
    electionOf: () => '1',
    sockets,
    maxBuffered: opts.maxBuffered,
    maxTotalBuffered: opts.maxTotalBuffered,
    metrics,
    log: createLogger('silent'),
  });
  const closes = async (cause: string) =>
    (await metrics.registry.getSingleMetric('hub_slow_reader_closes_total')?.get())?.values.find((v) => v.labels.cause === cause)?.value ?? 0;
  return { delivery, socket, sockets, closes, total };
}

describe('buffer limits during the live fan-out', () => {
  it('a socket that stops reading is closed with 4008 while a large batch is still being published, not after it', async () => {
    const hub = fakeHub({ maxBuffered: 1 * MB, maxTotalBuffered: 256 * MB });
    const stalled = [hub.socket(true), hub.socket(true), hub.socket(true)];
    const healthy = hub.socket(false);
    // One page: 200 rows of 100 KB (20 MB), published in one call.
    hub.delivery.publish(Array.from({ length: 200 }, (_, i) => event(i + 1, 100 * KB)));
    for (const ws of stalled) {
      expect(ws.code).toBe(4008);
      // Closed within about one frame of its limit, not with the whole batch buffered.
      expect(ws.maxSeen).toBeLessThanOrEqual(1 * MB + 2 * 100 * KB);
    }
    expect(healthy.code).toBe(undefined);
    expect(await hub.closes('socket_limit')).toBe(3);
    expect(await hub.closes('global_budget')).toBe(0);
  });

  it('past the global budget the most buffered sockets are closed first, until the rest fits', async () => {
    const hub = fakeHub({ maxBuffered: 64 * MB, maxTotalBuffered: 4 * MB });
    // Six stalled sockets on their own topics, given 3, 2.5, 2, 1.5, 1 and 0.5 MB.
    const mbs = [3, 2.5, 2, 1.5, 1, 0.5];
    const socks = mbs.map((_, i) => hub.socket(true, `committee:${i + 1}`));
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
    const socks = Array.from({ length: 50 }, () => hub.socket(true));
    // One page of 100 rows of 100 KB: 10 MB, 500 MB once fanned out to the 50 sockets.
    hub.delivery.publish(Array.from({ length: 100 }, (_, i) => event(i + 1, 100 * KB)));
    // Checked whenever budget/16 was fanned out since the last check (after a large frame):
    // the overshoot is at most that slice plus one event's fan-out.
    expect(hub.total.peak).toBeLessThanOrEqual(8 * MB + (8 * MB) / 16 + 50 * 100 * KB);
    expect(socks.every((s) => s.code === 4008)).toBe(true);
    expect(await hub.closes('global_budget')).toBe(50);
  });
});
