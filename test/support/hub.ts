import { Writable } from 'node:stream';
import pg from 'pg';
import WebSocket from 'ws';
import { type Env, parseConfig } from '../../src/config/index.ts';
import { type Hub, type HubDeps, startHub } from '../../src/main.ts';
import { createLogger } from '../../src/log.ts';
import { type TokenRequest, signToken } from '../../src/auth/jwt.ts';
import { type Position, ZERO, compare, decodeCursor, encodeCursor } from '../../src/events/position.ts';
import type { LifecycleEvent, LifecycleEvents } from '../../src/lifecycle/events.ts';

export const SECRET = 'test-secret-0123456789abcdef-0123456789';

/** Every log line of every hub started by tests in this process (checked for tokens). */
export const capturedLogs: string[] = [];

/**
 * Starts a hub on port 0 (127.0.0.1), metrics on another port 0, against `databaseUrl`, logs captured in memory.
 * Once its reader runs, waits until it has read past every row committed before it started (see `readPast`):
 * a reader starts at the cluster-wide horizon, which another test file's open transaction can hold below rows
 * this file wrote earlier, and those would otherwise reach the test's sockets as if new.
 */
export async function startTestHub(databaseUrl: string, env: Env = {}, deps: HubDeps = {}): Promise<Hub> {
  // Test files share one Redis: each database gets its own key namespace.
  const prefix = `hub:${new URL(databaseUrl).pathname.slice(1)}:`;
  const parsed = parseConfig({
    DATABASE_URL: databaseUrl,
    JWT_SECRET: SECRET,
    PORT: '0',
    HOST: '127.0.0.1',
    METRICS_PORT: '0',
    LOG_LEVEL: 'info',
    REDIS_PREFIX: prefix,
    ...env,
  });
  if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      capturedLogs.push(chunk.toString());
      cb();
    },
  });
  const hub = await startHub(parsed.config, {
    log: createLogger(parsed.config.LOG_LEVEL, sink),
    pruneEveryMs: 1000,
    ...deps,
  });
  // A hub started while its database refuses connections is not reading: nothing to wait for.
  if (hub.cursor() !== undefined) {
    const client = new pg.Client({ connectionString: databaseUrl });
    try {
      await client.connect();
      await readPast(hub, client);
    } catch (err) {
      await hub.stop();
      throw err;
    } finally {
      await client.end().catch(() => undefined); // the connect itself may be what failed
    }
  }
  return hub;
}

type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.Client, 'query'>;

/** Gives keys to what has committed so far (hub.sequence, sql/009_sequencer.sql): hub.outbox_in_order then holds all of it. */
export async function sequenced(db: Queryable): Promise<void> {
  await db.query('SELECT hub.sequence()');
}

/** The position of the last outbox row committed so far (ZERO when there is none). */
export async function outboxHead(db: Queryable): Promise<Position> {
  // The last row in the one global order (commit keys: sql/009_sequencer.sql).
  await sequenced(db);
  const r = await db.query<{ t: string; i: string }>(
    'SELECT seq::text AS t, id::text AS i FROM hub.outbox_in_order ORDER BY seq DESC, id DESC LIMIT 1',
  );
  const row = r.rows[0];
  return row ? { seq: BigInt(row.t), id: BigInt(row.i) } : ZERO;
}

/** The last outbox row committed so far as a cursor: a `since` that is exactly "after everything written". */
export const headCursor = async (db: Queryable) => encodeCursor(await outboxHead(db));

/** True when `cursor` (a hub's cursor or mark) is at or beyond `p`. */
export const reached = (cursor: string | undefined, p: Position) => {
  const c = decodeCursor(cursor);
  return c !== undefined && compare(c, p) >= 0;
};

/**
 * Resolves once `check()` holds: tested now and after every `event` of the hub (no polling,
 * no sleeping); rejects after `timeoutMs`, naming `what`.
 */
export function when<K extends LifecycleEvent>(
  hub: Hub,
  event: K,
  check: (e?: LifecycleEvents[K]) => boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let off = () => undefined as void;
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    const done = () => {
      off();
      clearTimeout(timer);
      resolve();
    };
    if (check()) return done();
    off = hub.events.on(event, (e) => {
      if (check(e)) done();
    });
  });
}

/**
 * "The hub has read what I wrote": waits until the hub's cursor has reached the last outbox
 * row committed so far. (Not the horizon: another test file's open transaction holds the
 * cluster-wide horizon below rows that are committed, so the cursor reaching it proves nothing.)
 */
export async function readPast(hub: Hub, db: Queryable, timeoutMs = 30_000): Promise<void> {
  const target = await outboxHead(db);
  await when(
    hub,
    'reader:read',
    () => reached(hub.cursor(), target),
    `the hub to read past ${encodeCursor(target)} (at ${hub.cursor()})`,
    timeoutMs,
  );
}

/**
 * A read of the outbox that began after this call (the second to finish: reads run one at a
 * time, so the first may have been in flight already). Resolves with its report.
 */
export function readAgain(hub: Hub, timeoutMs = 30_000): Promise<LifecycleEvents['reader:read']> {
  return new Promise((resolve, reject) => {
    let n = 0;
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no second outbox read within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = hub.events.on('reader:read', (e) => {
      if (++n < 2) return;
      off();
      clearTimeout(timer);
      resolve(e);
    });
  });
}

/** The type of the marker events `untilMarker` publishes (never an event of the application). */
export const MARKER = 'test.marker';
let markers = 0;

/**
 * "Nothing more arrives": publishes a marker application event on `topic` (default: the
 * client's `user:{sub}` topic) after whatever the test did, waits until `c` has it, and returns
 * the events `c` received before it. The hub delivers in one global order, so anything written
 * before the marker that was ever going to reach `c` has arrived by then.
 */
export async function untilMarker(db: Queryable, c: TestClient, topic?: string, timeoutMs = 15_000): Promise<Frame[]> {
  const n = ++markers;
  const hello = c.frames.find((f) => f.type === 'connection_success');
  const t = topic ?? `user:${String(hello?.sub)}`;
  if (!topic && !(hello?.topics as string[] | undefined)?.includes(t))
    throw new Error(`untilMarker: the client is not on ${t}; name a topic it is on`);
  await db.query('SELECT hub.publish($1, $2, $3::jsonb)', [t, MARKER, JSON.stringify({ n })]);
  const m = await c.seen((f) => f.type === MARKER && (f.data as { n?: unknown } | undefined)?.n === n, timeoutMs);
  return c.frames.slice(0, c.frames.indexOf(m)).filter(isEvent);
}

/**
 * A ping and its pong: every frame the hub sent this socket before it read the ping has
 * arrived once the pong has (one connection, in order). For sockets on no topic, where no
 * marker can reach them.
 */
export async function roundTrip(c: TestClient, timeoutMs = 10_000): Promise<void> {
  const before = c.frames.length;
  c.send({ type: 'ping' });
  await c.seen((f) => f.type === 'pong', timeoutMs, before);
}

/** The Redis key namespace startTestHub gives hubs of this database. */
export const redisPrefix = (databaseUrl: string) => `hub:${new URL(databaseUrl).pathname.slice(1)}:`;

export const token = (req: TokenRequest, secret = SECRET) => signToken(secret, req);

export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export type Frame = { type: string; cursor?: string; [k: string]: unknown };

export type TestClient = {
  ws: WebSocket;
  frames: Frame[];
  /** Frames that carry an outbox cursor (row and application events), without test markers (`untilMarker`). */
  events(): Frame[];
  send(frame: unknown): void;
  /**
   * The next frame matching `pred` after the one the previous `next` returned (from the first
   * frame on the first call), waiting for it if it has not arrived yet.
   */
  next(pred: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
  /** The first frame received (from index `from` on) that matches `pred`, waiting for it; leaves `next`'s place alone. */
  seen(pred: (f: Frame) => boolean, timeoutMs?: number, from?: number): Promise<Frame>;
  closed: Promise<{ code: number; reason: string }>;
  close(): Promise<void>;
};

const CONTROL = new Set([
  'connection_success',
  'subscribed',
  'unsubscribed',
  'resync',
  'pong',
  'error',
  'dashboard_update',
]);
const isEvent = (f: Frame) => !CONTROL.has(f.type) && f.type !== MARKER;

/**
 * How often a socket dropped right after its upgrade is opened again. uWebSockets.js closes a
 * socket upgraded asynchronously (res.cork(() => res.upgrade()) after an await) right after
 * `open` when cork() misreads freed heap bytes as "Connection: close" (uNetworking/uWebSockets
 * #1928, fixed upstream by PR #1929, not in our build; MALLOC_PERTURB_=16 makes it happen to most
 * sockets). The client sees 1006 and no frame. Real clients (the SDK) reconnect; so does this one.
 */
const DROPPED_UPGRADE_RETRIES = 5;

/** Sockets this process had to open again after such a drop (see above). */
export const droppedUpgrades = { count: 0 };

/**
 * Opens a WebSocket to the hub; resolves once its first frame (connection_success) arrived or it
 * was closed (rejects with the HTTP status if refused). A socket dropped right after the upgrade
 * (1006 before any frame) is opened again, as any real client would.
 */
export async function connect(
  hub: { port: number },
  opts: { token?: string; query?: string; headers?: Record<string, string>; protocols?: string[] } = {},
): Promise<TestClient> {
  for (let attempt = 1; ; attempt++) {
    const c = await connectOnce(hub, opts);
    const dropped = c.frames.length === 0 && c.ws.readyState === WebSocket.CLOSED && (await c.closed).code === 1006;
    if (!dropped || attempt > DROPPED_UPGRADE_RETRIES) return c;
    droppedUpgrades.count++;
    process.stderr.write(
      `[test client] socket dropped right after its upgrade (1006, no frame: uWS#1928); opening it again\n`,
    );
  }
}

function connectOnce(
  hub: { port: number },
  opts: { token?: string; query?: string; headers?: Record<string, string>; protocols?: string[] },
): Promise<TestClient> {
  const q = new URLSearchParams(opts.query ?? '');
  if (opts.token) q.set('token', opts.token);
  const qs = q.toString();
  const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws${qs ? `?${qs}` : ''}`, opts.protocols ?? [], {
    headers: opts.headers ?? {},
  });
  const frames: Frame[] = [];
  const watchers = new Set<() => void>();
  let ended: { code: number; reason: string } | undefined;
  ws.on('message', (data) => {
    frames.push(JSON.parse(data.toString()) as Frame);
    for (const w of watchers) w();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => {
      ended = { code, reason: reason.toString() };
      resolve(ended);
      for (const w of watchers) w();
    });
  });
  return new Promise((resolve, reject) => {
    ws.once('unexpected-response', (_req, res) => {
      reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode }));
      ws.terminate();
    });
    ws.once('error', reject);
    ws.once('open', () => {
      ws.on('error', () => undefined); // resets after a server-side close surface through `closed`
      // Where the next `next` starts looking: just after the frame the previous one returned.
      let nextFrom = 0;
      /**
       * The first frame at or after `from` matching `pred`, as it arrives; resolves with its index.
       * Fails at once when the socket has closed without one: no frame comes after the close.
       */
      const find = (from: number, pred: (f: Frame) => boolean, timeoutMs: number) =>
        new Promise<number>((res, rej) => {
          let index = from;
          const done = () => {
            watchers.delete(check);
            clearTimeout(timer);
          };
          const fail = (why: string) => {
            done();
            const tail = frames
              .slice(-5)
              .map((f) => f.type)
              .join(',');
            rej(new Error(`no matching frame: ${why}; ${frames.length} frames, last: ${tail}`));
          };
          function check() {
            for (; index < frames.length; index++) {
              if (pred(frames[index] as Frame)) {
                done();
                res(index);
                return;
              }
            }
            if (ended) fail(`socket closed with ${ended.code}${ended.reason ? ` (${ended.reason})` : ''}`);
          }
          const timer = setTimeout(() => fail(`none within ${timeoutMs} ms`), timeoutMs);
          watchers.add(check);
          check();
        });
      const client: TestClient = {
        ws,
        frames,
        events: () => frames.filter(isEvent),
        send: (f) => ws.send(typeof f === 'string' ? f : JSON.stringify(f)),
        async next(pred, timeoutMs = 10_000) {
          const i = await find(nextFrom, pred, timeoutMs);
          nextFrom = Math.max(nextFrom, i + 1);
          return frames[i] as Frame;
        },
        async seen(pred, timeoutMs = 10_000, from = 0) {
          return frames[await find(from, pred, timeoutMs)] as Frame;
        },
        closed,
        async close() {
          if (ws.readyState === WebSocket.CLOSED) return;
          ws.close();
          await closed;
        },
      };
      // Ready once the hub has spoken (connection_success comes first) or the socket is gone.
      const settle = () => {
        if (frames.length === 0 && !ended) return;
        watchers.delete(settle);
        resolve(client);
      };
      watchers.add(settle);
      settle();
    });
  });
}

/** Waits until a client has received `n` events (row or app events). */
export async function eventsReceived(c: TestClient, n: number, timeoutMs = 15_000): Promise<Frame[]> {
  await waitUntil(() => c.events().length >= n, timeoutMs, `${n} events (have ${c.events().length})`);
  return c.events();
}

/** The HTTP status of a WebSocket upgrade attempt (101 when it opened; the socket is closed again). */
export async function upgradeStatus(hub: { port: number }, opts: Parameters<typeof connect>[1]): Promise<number> {
  try {
    const c = await connect(hub, opts);
    await c.close();
    return 101;
  } catch (err) {
    return (err as { status?: number }).status ?? -1;
  }
}
