/*
 * config/: the environment, parsed once at start-up.
 *
 * Lifecycle: `parseConfig` runs once (the CLI, the demo, tests); the result is frozen and passed
 * down, so no module reads `process.env` itself. Invariants: every problem is reported at once,
 * one line per variable, and a bad configuration stops the process with exit 2 before anything
 * listens; nothing is logged-and-ignored. Empty strings mean unset.
 */
import { createPublicKey } from 'node:crypto';
import { z } from 'zod';

/** Parses a duration such as `500ms`, `30s`, `15m`, `24h`, `7d` or a bare number of seconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[unit];
  return factor === undefined ? undefined : n * factor;
}

const duration = (name: string) =>
  z.string().transform((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `${name}: expected a duration like 30s, 15m or 24h` });
      return z.NEVER;
    }
    return ms;
  });

const int = (min: number, max: number) =>
  z.string().regex(/^\d+$/, 'expected a whole number').transform(Number).pipe(z.number().int().min(min).max(max));

const url = (protocols: string[]) =>
  z.string().refine(
    (v) => {
      try {
        return protocols.includes(new URL(v).protocol);
      } catch {
        return false;
      }
    },
    `expected a URL starting with ${protocols.join(' or ')}`,
  );

const publicKey = z.string().transform((pem, ctx) => {
  try {
    const key = createPublicKey(pem.replace(/\\n/g, '\n'));
    return { pem: key.export({ type: 'spki', format: 'pem' }).toString(), type: key.asymmetricKeyType ?? 'unknown' };
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a PEM public key (${(err as Error).message})` });
    return z.NEVER;
  }
});

/** `WS_COMPRESSION` values; `dedicated` is `dedicated-4kb` (src/hub/server.ts maps them to uWS's options). */
export const WS_COMPRESSION_MODES = [
  'off',
  'shared',
  'dedicated',
  'dedicated-3kb',
  'dedicated-4kb',
  'dedicated-8kb',
  'dedicated-16kb',
  'dedicated-32kb',
  'dedicated-64kb',
  'dedicated-128kb',
  'dedicated-256kb',
] as const;
export type WsCompression = (typeof WS_COMPRESSION_MODES)[number];

const envSchema = z
  .object({
    DATABASE_URL: url(['postgres:', 'postgresql:']).optional(),
    REDIS_URL: url(['redis:', 'rediss:']).optional(),
    PORT: int(0, 65535).default(8080),
    HOST: z.string().min(1).default('0.0.0.0'),
    // Prometheus listener: loopback by default; never the public port (which answers 404 for /metrics).
    METRICS_PORT: int(0, 65535).default(9464),
    METRICS_HOST: z.string().min(1).default('127.0.0.1'),
    JWT_SECRET: z
      .string()
      .refine((s) => Buffer.byteLength(s) >= 32, 'must be at least 32 bytes')
      .optional(),
    JWT_PUBLIC_KEY: publicKey.optional(),
    JWKS_URL: url(['https:', 'http:']).optional(),
    JWT_ISSUER: z.string().min(1).optional(),
    JWT_AUDIENCE: z.string().min(1).optional(),
    JWT_CLOCK_TOLERANCE: duration('JWT_CLOCK_TOLERANCE').default(5000),
    ALLOWED_ORIGINS: z
      .string()
      .default('*')
      .transform((s) =>
        s
          .split(',')
          .map((o) => o.trim())
          .filter(Boolean),
      ),
    DASHBOARD_CACHE_KEYS: z
      .string()
      .optional()
      .transform((s) =>
        s
          ? s
              .split(',')
              .map((k) => k.trim())
              .filter(Boolean)
          : [],
      )
      .refine((keys) => keys.every((k) => k.includes('{election_id}')), 'every template must contain {election_id}'),
    MAX_CONNECTIONS_PER_SUB: int(1, 1_000_000).default(20),
    MAX_PAYLOAD_BYTES: int(64, 16 * 1024 * 1024).default(16384),
    // permessage-deflate for clients that offer it (browsers do): `off`, `shared` (one
    // compressor for all sockets, no context kept between frames) or `dedicated` (a sliding
    // window per socket; `dedicated-<n>kb` picks uWS's per-socket memory). Default chosen by
    // measurement: docs/BENCHMARKS.md "Compression".
    WS_COMPRESSION: z.enum(WS_COMPRESSION_MODES).default('shared'),
    // Frames smaller than this go uncompressed even to sockets that negotiated deflate: deflate
    // runs once per receiving socket, and small row events save little for their CPU.
    WS_COMPRESSION_MIN_BYTES: int(0, 16 * 1024 * 1024).default(1024),
    MAX_BACKPRESSURE_BYTES: int(1024, 1024 * 1024 * 1024).default(1048576),
    MAX_TOPICS_PER_CONNECTION: int(1, 100_000).default(200),
    MAX_CONNECTIONS: int(1, 10_000_000).optional(),
    MAX_MESSAGES_PER_SECOND: int(1, 1_000_000).default(50),
    OUTBOX_RETENTION: duration('OUTBOX_RETENTION').default(24 * 3_600_000),
    REPLAY_BUFFER_EVENTS: int(0, 10_000_000).default(20_000),
    // Memory budgets (bytes): the replay ring's frames, and what all sockets together may have
    // buffered before the most-buffered ones are closed with 4008.
    REPLAY_BUFFER_BYTES: int(0, 2 ** 40).default(64 * 1024 * 1024),
    MAX_TOTAL_BUFFERED_BYTES: int(65_536, 2 ** 40).default(256 * 1024 * 1024),
    // Coalescing of dashboard_update: a write waits up to this for the next one. 250 ms is what
    // CONTRACT section 5 states ("at most one per election per 250 ms"); it bounds the real-size
    // commit→dashboard p99 from below (~285 ms at best), 150 ms gets it under 250 ms on a quiet
    // machine for ~10% more update bytes (docs/BENCHMARKS.md "Latency and the debounce").
    DASHBOARD_DEBOUNCE: duration('DASHBOARD_DEBOUNCE').default(250),
    // How often each held election's stream-maintained totals are checked against a full computation (0: never).
    DASHBOARD_VERIFY_INTERVAL: duration('DASHBOARD_VERIFY_INTERVAL').default(10 * 60_000),
    SHUTDOWN_TIMEOUT: duration('SHUTDOWN_TIMEOUT').default(10_000),
    REDIS_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9:._-]{1,64}$/, 'letters, digits and :._- (max 64)')
      .default('hub:'),
    NODE_ID: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, 'letters, digits, dot, dash, underscore (max 64)')
      .optional(),
    CONNECTION_LEASE_TTL: duration('CONNECTION_LEASE_TTL').default(30_000),
    PRESENCE_INTERVAL: duration('PRESENCE_INTERVAL').default(5_000),
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .superRefine((env, ctx) => {
    const sources = [env.JWT_SECRET, env.JWT_PUBLIC_KEY, env.JWKS_URL].filter((v) => v !== undefined).length;
    if (sources === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['JWT_SECRET'],
        message: 'one key source is required: JWT_SECRET, JWT_PUBLIC_KEY or JWKS_URL',
      });
    }
    if (sources > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['JWT_SECRET'],
        message: 'set only one of JWT_SECRET, JWT_PUBLIC_KEY, JWKS_URL (algorithms are pinned to one key kind)',
      });
    }
    if (env.METRICS_PORT !== 0 && env.METRICS_PORT === env.PORT) {
      ctx.addIssue({
        code: 'custom',
        path: ['METRICS_PORT'],
        message: `must differ from PORT (${env.PORT}): metrics have their own listener`,
      });
    }
    if (env.JWT_PUBLIC_KEY && !['rsa', 'ec', 'ed25519'].includes(env.JWT_PUBLIC_KEY.type)) {
      ctx.addIssue({
        code: 'custom',
        path: ['JWT_PUBLIC_KEY'],
        message: `unsupported key type ${env.JWT_PUBLIC_KEY.type} (RSA, EC P-256 or Ed25519)`,
      });
    }
  });

export type Env = Record<string, string | undefined>;

/** The hub's validated, frozen configuration. */
export type Config = Readonly<
  Omit<z.output<typeof envSchema>, 'ALLOWED_ORIGINS' | 'DASHBOARD_CACHE_KEYS'> & {
    ALLOWED_ORIGINS: readonly string[];
    DASHBOARD_CACHE_KEYS: readonly string[];
  }
>;

export type ConfigResult = { ok: true; config: Config } | { ok: false; errors: string[] };

const KNOWN = Object.keys(envSchema.shape);

/** Parses the environment once. Every problem is reported, not just the first. */
export function parseConfig(env: Env, require: { database?: boolean } = {}): ConfigResult {
  // Empty strings mean "unset" (docker-compose writes `X=` for blank variables).
  const input: Record<string, string> = {};
  for (const key of KNOWN) {
    const v = env[key];
    if (v !== undefined && v !== '') input[key] = v;
  }
  const parsed = envSchema.safeParse(input);
  const errors: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const name = String(issue.path[0] ?? 'environment');
      errors.push(`${name}: ${issue.message.replace(/^[A-Z_]+: /, '')}`);
    }
  }
  if (require.database && !input.DATABASE_URL) errors.push('DATABASE_URL: required');
  if (errors.length > 0 || !parsed.success) return { ok: false, errors };
  return { ok: true, config: Object.freeze({ ...parsed.data }) };
}

/** Formats configuration errors for the operator: one line per offending variable. */
export function formatConfigErrors(errors: readonly string[]): string {
  return ['invalid configuration:', ...errors.map((e) => `  - ${e}`)].join('\n');
}
