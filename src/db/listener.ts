import { createRequire } from 'node:module';
import type pg from 'pg';
import type { Options, Subscriber } from 'pg-listen';
import type { Logger } from '../log.ts';
import { NotifyPayload } from '../events/schema.ts';
import { errorMessage } from '../errors.ts';

// pg-listen is CommonJS with `exports.default`; required directly to avoid ESM interop guesswork.
const createSubscriber = (
  createRequire(import.meta.url)('pg-listen') as { default: (config: pg.ClientConfig, options: Options) => Subscriber }
).default;

export const CHANNEL = 'hub_outbox';

export type Listener = {
  readonly connected: () => boolean;
  /** True only while LISTEN is in effect on a live connection: a reader may sleep on it. */
  readonly listening: () => boolean;
  readonly lastError: () => string | undefined;
  stop(): Promise<void>;
};

export type ListenerOptions = {
  connectionString: string;
  log: Logger;
  /** Called on every notification and after every (re)connect: notifications may have been missed. */
  onWake: () => void;
  onState: (connected: boolean) => void;
  onBadPayload?: () => void;
  watchdogMs?: number;
};

const backoff = (attempt: number) => Math.min(5000, 100 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2);

/**
 * The listener owns one dedicated connection (via pg-listen). pg-listen reconnects by
 * itself, but by default gives up after 3 s, never retries a failed first connect, and
 * can hang on a half-dead socket (its issues 14 and 56); so: no retry timeout, a watchdog
 * round trip that must answer within `watchdogMs`, and a fresh subscriber whenever pg-listen
 * reports a fatal error. The attempt counter resets only once LISTEN has succeeded.
 */
export function startListener(opts: ListenerOptions): Listener {
  const { log } = opts;
  const watchdogMs = opts.watchdogMs ?? 3000;
  let sub: Subscriber | undefined;
  let connected = false;
  let listening = false;
  let stopped = false;
  let attempt = 0;
  let lastError: string | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let watchdog: NodeJS.Timeout | undefined;

  const setConnected = (value: boolean) => {
    if (connected === value) return;
    connected = value;
    opts.onState(value);
    if (value) opts.onWake();
  };

  const recreate = (why: string) => {
    if (stopped) return;
    lastError = why;
    setConnected(false);
    const old = sub;
    sub = undefined;
    if (old) void old.close().catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'closing failed listener'));
    const delay = backoff(attempt++);
    log.warn({ reason: why, retryInMs: Math.round(delay), attempt }, 'database listener down, reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => void connect(), delay);
  };

  const connect = async () => {
    if (stopped) return;
    const s = createSubscriber(
      {
        connectionString: opts.connectionString,
        application_name: 'election-hub-listener',
        connectionTimeoutMillis: 5000,
      },
      {
        parse: (raw: string) => raw,
        retryLimit: Infinity,
        retryTimeout: 0,
        retryInterval: backoff,
        paranoidChecking: false,
      },
    );
    sub = s;
    listening = false;
    s.notifications.on(CHANNEL, (payload: unknown) => {
      if (!NotifyPayload.optional().safeParse(payload).success) opts.onBadPayload?.();
      opts.onWake(); // whatever the payload said, the outbox is read from the cursor
    });
    s.events.on('reconnect', (n: number) => {
      if (sub !== s) return;
      lastError = 'connection lost';
      setConnected(false);
      log.warn({ attempt: n }, 'database listener reconnecting');
    });
    s.events.on('connected', () => {
      if (sub !== s || stopped) return;
      attempt = 0;
      lastError = undefined;
      setConnected(true);
      log.info('database listener connected');
    });
    s.events.on('error', (err: Error) => {
      if (sub === s) recreate(err.message);
    });
    try {
      await s.connect();
      await s.listenTo(CHANNEL);
      if (sub === s) {
        attempt = 0;
        lastError = undefined;
        setConnected(true);
        // pg-listen reports its first connection before our LISTEN has run (after a reconnect
        // it re-runs LISTEN first): only now may a reader sleep, and it must read once more, for
        // a notification sent before LISTEN took effect never reaches it.
        listening = true;
        opts.onWake();
      }
    } catch (err) {
      if (sub === s) recreate(errorMessage(err));
    }
  };

  // A round trip on the listener's own connection; pg-listen's `notify` runs a query there.
  const check = async () => {
    const s = sub;
    if (!s || !connected) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`listener did not answer within ${watchdogMs} ms`)), watchdogMs);
    });
    try {
      await Promise.race([s.notify('hub_watchdog'), timeout]);
    } catch (err) {
      if (sub === s) recreate(errorMessage(err));
    } finally {
      clearTimeout(timer);
    }
  };
  watchdog = setInterval(() => void check(), watchdogMs);

  void connect();

  return {
    connected: () => connected,
    listening: () => connected && listening,
    lastError: () => lastError,
    async stop() {
      stopped = true;
      clearTimeout(retryTimer);
      clearInterval(watchdog);
      watchdog = undefined;
      const s = sub;
      sub = undefined;
      setConnected(false);
      if (s) await s.close().catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'closing listener'));
    },
  };
}
