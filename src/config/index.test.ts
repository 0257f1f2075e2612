import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type Config, type Env, formatConfigErrors, parseConfig, parseDuration } from './index.ts';

const SECRET = 'x'.repeat(32);

const ok = (env: Env, require: { database?: boolean } = {}): Config => {
  const r = parseConfig(env, require);
  if (!r.ok) throw new Error(r.errors.join('\n'));
  return r.config;
};
const errors = (env: Env, require: { database?: boolean } = {}): string[] => {
  const r = parseConfig(env, require);
  if (r.ok) throw new Error('expected the configuration to be refused');
  return r.errors;
};

describe('parseDuration', () => {
  it('reads ms, s, m, h, d and bare seconds', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('15m')).toBe(900_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('7d')).toBe(604_800_000);
    expect(parseDuration('10')).toBe(10_000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration(' 2s ')).toBe(2000);
    expect(parseDuration('0')).toBe(0);
  });

  it('refuses anything else', () => {
    for (const bad of ['', 's', '5w', '-1s', '1e3', '5 s', '5S', '.5s', '5.s', 'ten', '1h30m'])
      expect(parseDuration(bad), bad).toBeUndefined();
  });
});

describe('parseConfig', () => {
  it('defaults: what the README lists', () => {
    const c = ok({ JWT_SECRET: SECRET });
    expect(c).toMatchObject({
      PORT: 8080,
      HOST: '0.0.0.0',
      METRICS_PORT: 9464,
      METRICS_HOST: '127.0.0.1',
      ALLOWED_ORIGINS: ['*'],
      DASHBOARD_CACHE_KEYS: [],
      MAX_CONNECTIONS_PER_SUB: 20,
      MAX_PAYLOAD_BYTES: 16384,
      MAX_BACKPRESSURE_BYTES: 1048576,
      MAX_TOPICS_PER_CONNECTION: 200,
      MAX_MESSAGES_PER_SECOND: 50,
      OUTBOX_RETENTION: 24 * 3_600_000,
      REPLAY_BUFFER_EVENTS: 20_000,
      REPLAY_BUFFER_BYTES: 64 * 1024 * 1024,
      MAX_TOTAL_BUFFERED_BYTES: 256 * 1024 * 1024,
      DASHBOARD_DEBOUNCE: 250,
      SHUTDOWN_TIMEOUT: 10_000,
      JWT_CLOCK_TOLERANCE: 5000,
      REDIS_PREFIX: 'hub:',
      CONNECTION_LEASE_TTL: 30_000,
      PRESENCE_INTERVAL: 5_000,
      LOG_LEVEL: 'info',
    });
    for (const unset of [
      'DATABASE_URL',
      'REDIS_URL',
      'MAX_CONNECTIONS',
      'NODE_ID',
      'JWT_ISSUER',
      'JWT_AUDIENCE',
      'JWT_PUBLIC_KEY',
      'JWKS_URL',
    ]) {
      expect(c[unset as keyof Config], unset).toBeUndefined();
    }
  });

  it('is frozen', () => {
    const c = ok({ JWT_SECRET: SECRET });
    expect(Object.isFrozen(c)).toBe(true);
    expect(() => {
      (c as { PORT: number }).PORT = 1;
    }).toThrow(TypeError);
  });

  it('reads values: numbers, durations, lists; empty strings mean unset; unknown variables are ignored', () => {
    const c = ok({
      JWT_SECRET: SECRET,
      DATABASE_URL: 'postgres://u@db/x',
      REDIS_URL: 'rediss://r:6380',
      PORT: '0',
      METRICS_PORT: '0',
      OUTBOX_RETENTION: '90m',
      SHUTDOWN_TIMEOUT: '2500ms',
      ALLOWED_ORIGINS: ' https://a.example , https://b.example ,',
      DASHBOARD_CACHE_KEYS: 'dashboard:{election_id}, totals:{election_id}',
      MAX_CONNECTIONS: '',
      HOST: '',
      SOMETHING_ELSE: 'whatever',
    });
    expect(c).toMatchObject({
      DATABASE_URL: 'postgres://u@db/x',
      REDIS_URL: 'rediss://r:6380',
      PORT: 0,
      METRICS_PORT: 0,
      OUTBOX_RETENTION: 5_400_000,
      SHUTDOWN_TIMEOUT: 2500,
      ALLOWED_ORIGINS: ['https://a.example', 'https://b.example'],
      DASHBOARD_CACHE_KEYS: ['dashboard:{election_id}', 'totals:{election_id}'],
      HOST: '0.0.0.0',
    });
    expect(c.MAX_CONNECTIONS).toBeUndefined();
    expect('SOMETHING_ELSE' in c).toBe(false);
  });

  it('reports every offending variable, not just the first, one line each, named first', () => {
    const e = errors({
      DATABASE_URL: 'mysql://nope',
      REDIS_URL: 'http://r',
      JWT_SECRET: 'short',
      PORT: 'eighty',
      METRICS_HOST: '',
      MAX_PAYLOAD_BYTES: '-1',
      MAX_BACKPRESSURE_BYTES: '12',
      OUTBOX_RETENTION: 'a while',
      DASHBOARD_CACHE_KEYS: 'dashboard',
      REDIS_PREFIX: 'has space',
      NODE_ID: 'a/b',
      LOG_LEVEL: 'loud',
      JWKS_URL: 'ftp://keys',
    });
    const names = e.map((line) => line.split(':')[0]);
    for (const name of [
      'DATABASE_URL',
      'REDIS_URL',
      'JWT_SECRET',
      'PORT',
      'MAX_PAYLOAD_BYTES',
      'MAX_BACKPRESSURE_BYTES',
      'OUTBOX_RETENTION',
      'DASHBOARD_CACHE_KEYS',
      'REDIS_PREFIX',
      'NODE_ID',
      'LOG_LEVEL',
      'JWKS_URL',
    ]) {
      expect(names, name).toContain(name);
    }
    expect(names).not.toContain('METRICS_HOST'); // empty: unset, so its default
    for (const line of e) expect(line).toMatch(/^[A-Z_]+: \S/);
    // A duration's message names it once, not twice.
    expect(e).toContain('OUTBOX_RETENTION: expected a duration like 30s, 15m or 24h');
    expect(e.find((l) => l.startsWith('JWT_SECRET'))).toBe('JWT_SECRET: must be at least 32 bytes');
  });

  it('numbers: whole, within range', () => {
    expect(errors({ JWT_SECRET: SECRET, PORT: '65536' })[0]).toMatch(/^PORT: /);
    expect(errors({ JWT_SECRET: SECRET, PORT: '80.5' })[0]).toBe('PORT: expected a whole number');
    expect(errors({ JWT_SECRET: SECRET, MAX_CONNECTIONS_PER_SUB: '0' })[0]).toMatch(/^MAX_CONNECTIONS_PER_SUB: /);
    expect(ok({ JWT_SECRET: SECRET, MAX_CONNECTIONS: '10000000' }).MAX_CONNECTIONS).toBe(10_000_000);
  });

  it('exactly one key source', () => {
    expect(errors({})).toEqual(['JWT_SECRET: one key source is required: JWT_SECRET, JWT_PUBLIC_KEY or JWKS_URL']);
    expect(errors({ JWT_SECRET: SECRET, JWKS_URL: 'https://idp.example/jwks' })[0]).toMatch(
      /^JWT_SECRET: set only one of/,
    );
    expect(ok({ JWKS_URL: 'https://idp.example/jwks' }).JWKS_URL).toBe('https://idp.example/jwks');
  });

  it('a PEM public key: RSA, EC or Ed25519; escaped newlines are accepted; anything else is refused', () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(ok({ JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n') }).JWT_PUBLIC_KEY).toEqual({ pem, type: 'ec' });
    expect(errors({ JWT_PUBLIC_KEY: 'not a key' })[0]).toMatch(/^JWT_PUBLIC_KEY: not a PEM public key/);
    const x448 = generateKeyPairSync('x448').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(errors({ JWT_PUBLIC_KEY: x448 })).toEqual([
      'JWT_PUBLIC_KEY: unsupported key type x448 (RSA, EC P-256 or Ed25519)',
    ]);
  });

  it('metrics never share the public port (0, a free port, is fine for both)', () => {
    expect(errors({ JWT_SECRET: SECRET, PORT: '9000', METRICS_PORT: '9000' })).toEqual([
      'METRICS_PORT: must differ from PORT (9000): metrics have their own listener',
    ]);
    expect(errors({ JWT_SECRET: SECRET, PORT: '9464' })[0]).toMatch(/^METRICS_PORT: must differ from PORT \(9464\)/);
    expect(ok({ JWT_SECRET: SECRET, PORT: '0', METRICS_PORT: '0' }).PORT).toBe(0);
  });

  it('DATABASE_URL only when the command needs it, reported with the rest', () => {
    expect(ok({ JWT_SECRET: SECRET }).DATABASE_URL).toBeUndefined();
    expect(errors({ JWT_SECRET: SECRET }, { database: true })).toEqual(['DATABASE_URL: required']);
    expect(errors({ PORT: 'x' }, { database: true })).toEqual([
      'PORT: expected a whole number',
      'JWT_SECRET: one key source is required: JWT_SECRET, JWT_PUBLIC_KEY or JWKS_URL',
      'DATABASE_URL: required',
    ]);
  });
});

describe('formatConfigErrors (what `serve` prints before exiting with 2)', () => {
  it('one line per offending variable under a heading, no stack', () => {
    expect(formatConfigErrors(['PORT: expected a whole number', 'DATABASE_URL: required'])).toBe(
      'invalid configuration:\n  - PORT: expected a whole number\n  - DATABASE_URL: required',
    );
  });
});
