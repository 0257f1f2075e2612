import { Writable } from 'node:stream';
import WebSocket from 'ws';
import { type Env, parseConfig } from '../../src/config/index.ts';
import { type Hub, type HubDeps, startHub } from '../../src/main.ts';
import { createLogger } from '../../src/log.ts';
import { type TokenRequest, signToken } from '../../src/auth/jwt.ts';

export const SECRET = 'test-secret-0123456789abcdef-0123456789';

/** Every log line of every hub started by tests in this process (checked for tokens). */
export const capturedLogs: string[] = [];

/** Starts a hub on port 0 (127.0.0.1), metrics on another port 0, against `databaseUrl`, logs captured in memory. */
export async function startTestHub(databaseUrl: string, env: Env = {}, deps: HubDeps = {}): Promise<Hub> {
  // Test files share one Redis: each database gets its own key namespace.
  const prefix = `hub:${new URL(databaseUrl).pathname.slice(1)}:`;
  const parsed = parseConfig({ DATABASE_URL: databaseUrl, JWT_SECRET: SECRET, PORT: '0', HOST: '127.0.0.1', METRICS_PORT: '0', LOG_LEVEL: 'info', REDIS_PREFIX: prefix, ...env });
  if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      capturedLogs.push(chunk.toString());
      cb();
    },
  });
  return startHub(parsed.config, { log: createLogger(parsed.config.LOG_LEVEL, sink), pruneEveryMs: 1000, ...deps });
}

/** The Redis key namespace startTestHub gives hubs of this database. */
export const redisPrefix = (databaseUrl: string) => `hub:${new URL(databaseUrl).pathname.slice(1)}:`;

export const token = (req: TokenRequest, secret = SECRET) => signToken(secret, req);

export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
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
  /** Frames that carry an outbox cursor (row and application events). */
  events(): Frame[];
  send(frame: unknown): void;
  next(pred: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
  closed: Promise<{ code: number; reason: string }>;
  close(): Promise<void>;
};

const CONTROL = new Set(['connection_success', 'subscribed', 'unsubscribed', 'resync', 'pong', 'error', 'dashboard_update']);

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
    process.stderr.write(`[test client] socket dropped right after its upgrade (1006, no frame: uWS#1928); opening it again\n`);
  }
}

function connectOnce(
  hub: { port: number },
  opts: { token?: string; query?: string; headers?: Record<string, string>; protocols?: string[] },
): Promise<TestClient> {
  const q = new URLSearchParams(opts.query ?? '');
  if (opts.token) q.set('token', opts.token);
  const qs = q.toString();
  const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws${qs ? `?${qs}` : ''}`, opts.protocols ?? [], { headers: opts.headers ?? {} });
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
      const client: TestClient = {
        ws,
        frames,
        events: () => frames.filter((f) => !CONTROL.has(f.type)),
        send: (f) => ws.send(typeof f === 'string' ? f : JSON.stringify(f)),
        next(pred, timeoutMs = 10_000) {
          return new Promise((res, rej) => {
            let index = 0;
            const done = () => {
              watchers.delete(check);
              clearTimeout(timer);
            };
            const fail = (why: string) => {
              done();
              const tail = frames.slice(-5).map((f) => f.type).join(',');
              rej(new Error(`no matching frame: ${why}; ${frames.length} frames, last: ${tail}`));
            };
            function check() {
              for (; index < frames.length; index++) {
                const f = frames[index] as Frame;
                if (pred(f)) {
                  done();
                  index++;
                  res(f);
                  return;
                }
              }
              // No frame comes after the close: waiting on would only hide why.
              if (ended) fail(`socket closed with ${ended.code}${ended.reason ? ` (${ended.reason})` : ''}`);
            }
            const timer = setTimeout(() => fail(`none within ${timeoutMs} ms`), timeoutMs);
            watchers.add(check);
            check();
          });
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
