import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type Env, formatConfigErrors, parseConfig } from './config/index.ts';
import { migrate } from './db/migrate.ts';
import { signToken } from './auth/jwt.ts';
import { createLogger, redactUrl } from './log.ts';
import { errorMessage } from './errors.ts';

const USAGE = `usage: election-hub <command>
  migrate [--reference-schema] apply the hub schema to DATABASE_URL (idempotent); with
                               --reference-schema also the demo's tables and their watches
  serve                        run the hub against DATABASE_URL (and REDIS_URL when set)
  token --sub S [--role R] [--elections 1,2] [--committees 7] [--ttl 1h]
                               print an HS256 token signed with JWT_SECRET
  demo                         embedded PostgreSQL + simulator + hub + dashboard page`;

const ids = (s: string | undefined, flag: string): number[] => {
  if (!s) return [];
  const list = s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  if (!list.every((x) => /^[0-9]{1,15}$/.test(x))) throw new UsageError(`${flag} takes a comma list of numeric ids`);
  return list.map(Number);
};

class UsageError extends Error {}

/**
 * The demo (embedded PostgreSQL, simulator, demo runner) lives in demo/, outside the production
 * tree. It is imported by URL, not by a literal path, so that the compiler does not pull it into
 * the build of src/; demo/run.ts checks that it matches this shape.
 */
const DEMO = new URL('../demo/run.ts', import.meta.url);
export type DemoModule = { runDemo(env: Env): Promise<number> };

/**
 * Signals: the first starts an orderly stop (exit 0, or 1 when a shutdown step failed or hung
 * past SHUTDOWN_TIMEOUT), a second forces exit (130).
 */
export function onShutdownSignals(
  stop: () => Promise<void>,
  log: { info: (o: object, m: string) => void; error: (o: object, m: string) => void },
): void {
  let signalled = false;
  const handler = (sig: NodeJS.Signals) => {
    if (signalled) {
      process.exit(130);
    }
    signalled = true;
    log.info({ signal: sig }, 'shutting down');
    void stop().then(
      () => process.exit(0),
      (err: unknown) => {
        const steps = err instanceof AggregateError ? err.errors.map(errorMessage) : [];
        log.error({ err: errorMessage(err), steps }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

/** Runs a command; returns the exit status (2: bad usage or configuration). */
export async function main(argv: string[], env: Env = process.env): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'migrate': {
        const { values } = parseArgs({
          args: rest,
          options: { 'reference-schema': { type: 'boolean' } },
          strict: true,
        });
        const checked = parseConfig({ ...env, JWT_SECRET: env.JWT_SECRET ?? 'x'.repeat(32) }, { database: true });
        if (!checked.ok) {
          console.error(formatConfigErrors(checked.errors.filter((e) => e.startsWith('DATABASE_URL'))));
          return 2;
        }
        const url = checked.config.DATABASE_URL as string;
        const r = await migrate(url, { referenceSchema: values['reference-schema'] === true });
        console.log(
          r.applied.length
            ? `applied ${r.applied.join(', ')} to ${redactUrl(url)}`
            : `nothing to apply: ${redactUrl(url)} is up to date`,
        );
        return 0;
      }
      case 'serve': {
        const checked = parseConfig(env, { database: true });
        if (!checked.ok) {
          console.error(formatConfigErrors(checked.errors));
          return 2;
        }
        const { startHub } = await import('./main.ts');
        const { staticFilesFrom } = await import('./http/static.ts');
        const log = createLogger(checked.config.LOG_LEVEL);
        const starting = startHub(checked.config, { log, staticFiles: staticFilesFrom() });
        // Handlers first: a signal during start-up, or right as "hub listening" is logged, stops
        // the hub once it has started instead of killing the process on the spot.
        onShutdownSignals(() => starting.then((hub) => hub.stop()), log);
        await starting;
        await new Promise(() => undefined);
        return 0;
      }
      case 'token': {
        const { values } = parseArgs({
          args: rest,
          options: {
            sub: { type: 'string' },
            role: { type: 'string' },
            elections: { type: 'string' },
            committees: { type: 'string' },
            ttl: { type: 'string' },
          },
          strict: true,
        });
        if (!values.sub) throw new UsageError('token needs --sub');
        const secret = env.JWT_SECRET;
        if (!secret || Buffer.byteLength(secret) < 32) {
          console.error(formatConfigErrors(['JWT_SECRET: required, at least 32 bytes']));
          return 2;
        }
        const token = await signToken(secret, {
          sub: values.sub,
          ...(values.role ? { role: values.role } : {}),
          elections: ids(values.elections, '--elections'),
          committees: ids(values.committees, '--committees'),
          ...(values.ttl ? { ttl: values.ttl } : {}),
          ...(env.JWT_ISSUER ? { issuer: env.JWT_ISSUER } : {}),
          ...(env.JWT_AUDIENCE ? { audience: env.JWT_AUDIENCE } : {}),
        });
        console.log(token);
        return 0;
      }
      case 'demo': {
        // demo/ is outside src/, so neither dist/ nor the image has it: it runs from a checkout.
        if (!import.meta.url.endsWith('.ts') || !existsSync(DEMO)) {
          console.error(
            'election-hub demo: the demo is not part of this installation; run it from a checkout: npm ci && npm run demo',
          );
          return 2;
        }
        const { runDemo } = (await import(DEMO.href)) as DemoModule;
        return await runDemo(env);
      }
      case undefined:
      case 'help':
      case '--help':
        console.log(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command ${command}`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`${errorMessage(err)}\n${USAGE}`);
      return 2;
    }
    console.error(`election-hub ${command}: ${errorMessage(err)}`);
    return 1;
  }
}
