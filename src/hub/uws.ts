/*
 * The only module that loads uWebSockets.js. Two native builds can serve the hub, tried in order:
 *
 * - `uWebSockets.js`, which is npm:@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0: binaries for
 *   Node 16/18/20 (ABI 93/108/115) on Linux (glibc >= 2.27), macOS and Windows. On any other Node,
 *   or with UWS_USE_FALLBACK=1|true|True|TRUE in the environment, its src/uws.js silently returns a
 *   pure-JS stand-in (dist/index.js) that cannot run the hub (`us_socket_local_port is not a
 *   function`, `Not implemented`), after printing a warning with console.warn/console.log.
 * - `@btc-vision/uwebsockets.js` 20.57.0 (an optional dependency): binaries for Node 20/22/24/25
 *   (ABI 115/127/137/141), Linux needing glibc >= 2.38, macOS and Windows; it throws when none loads.
 *
 * A build counts only when a `.node` binary was actually loaded (seen in the require cache as a
 * child of the package's main module), so the stand-in is refused whatever the package decides.
 * When no build loads, importing this module throws UwsUnavailableError whose message is one line
 * naming the Node version, the glibc version and what to do; bin/election-hub.mjs prints it and
 * exits 2 before anything listens. UWS_BUILD=trufflesuite|btc-vision (a comma list, in order)
 * narrows the candidates, e.g. to check one build.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as Types from 'uWebSockets.js';

const require = createRequire(import.meta.url);

type Candidate = {
  /** The UWS_BUILD name. */
  id: string;
  specifier: string;
  /** ABIs (process.versions.modules) with a binary in the package. */
  abis: readonly string[];
  /** Linux glibc it needs (its binaries' highest GLIBC_ symbol version). */
  glibc: string;
};

const CANDIDATES: readonly Candidate[] = [
  { id: 'trufflesuite', specifier: 'uWebSockets.js', abis: ['93', '108', '115'], glibc: '2.27' },
  { id: 'btc-vision', specifier: '@btc-vision/uwebsockets.js', abis: ['115', '127', '137', '141'], glibc: '2.38' },
];

/** Node majors some candidate has a binary for (bin/election-hub.mjs keeps the same list). */
export const SUPPORTED_NODE_MAJORS = [20, 22, 24, 25] as const;

export type UwsBuild = {
  /** UWS_BUILD name of the build that loaded. */
  id: string;
  /** package name@version */
  package: string;
  /** The native binary's file name, e.g. uws_linux_x64_137.node */
  binary: string;
};

export class UwsUnavailableError extends Error {
  override readonly name = 'UwsUnavailableError';
  readonly exitCode = 2;
}

/** The glibc the process runs on, '' when it is not glibc (musl, macOS, Windows). */
export function glibcVersion(): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime ?? '';
}

const versionAtLeast = (have: string, need: string): boolean => {
  const a = have.split('.').map(Number);
  const b = need.split('.').map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d > 0;
  }
  return true;
};

type Attempt =
  | { candidate: Candidate; ok: true; mod: typeof Types; build: UwsBuild }
  | { candidate: Candidate; ok: false; reason: string };

function attempt(c: Candidate, env: NodeJS.ProcessEnv): Attempt {
  let main: string;
  try {
    main = require.resolve(c.specifier);
  } catch {
    return { candidate: c, ok: false, reason: `${c.specifier} is not installed` };
  }
  const pkgFile = findPackageJson(main);
  const version = (require(pkgFile) as { version?: string }).version ?? '?';
  const label = `${c.specifier}@${version}`;
  // The trufflesuite package announces its fallback on the console; the caller gets one line instead.
  const said: string[] = [];
  const saved = { log: console.log, warn: console.warn, error: console.error };
  const capture = (...args: unknown[]) => void said.push(args.map(String).join(' '));
  console.log = console.warn = console.error = capture;
  let mod: unknown;
  try {
    mod = require(main);
  } catch (err) {
    const detail = (err instanceof Error ? err.message : String(err)).split('\n').filter(Boolean).pop()?.trim() ?? '';
    const glibc = /GLIBC_([0-9.]+)' not found/.exec(detail)?.[1];
    if (glibc) return { candidate: c, ok: false, reason: `${label} needs glibc >= ${glibc}` };
    if (!c.abis.includes(process.versions.modules))
      return { candidate: c, ok: false, reason: `${label} has no binary for ABI ${process.versions.modules}` };
    return { candidate: c, ok: false, reason: `${label} did not load (${detail.slice(0, 200)})` };
  } finally {
    Object.assign(console, saved);
  }
  const binary = require.cache[main]?.children.find((m) => m.filename.endsWith('.node'));
  if (!binary) {
    const forced = /^(1|true|True|TRUE)$/.test(env.UWS_USE_FALLBACK ?? '') && c.id === 'trufflesuite';
    const why = forced
      ? 'UWS_USE_FALLBACK is set'
      : c.abis.includes(process.versions.modules)
        ? `its binary did not load: ${said.join(' ').replace(/\s+/g, ' ').trim().slice(0, 200)}`
        : `no binary for ABI ${process.versions.modules}`;
    return { candidate: c, ok: false, reason: `${label} would run its JS stand-in (${why})` };
  }
  return {
    candidate: c,
    ok: true,
    mod: mod as typeof Types,
    build: { id: c.id, package: label, binary: path.basename(binary.filename) },
  };
}

function findPackageJson(main: string): string {
  let dir = path.dirname(main);
  for (;;) {
    try {
      return require.resolve(path.join(dir, 'package.json'));
    } catch {
      const up = path.dirname(dir);
      if (up === dir) throw new Error(`no package.json above ${main}`);
      dir = up;
    }
  }
}

/** What to tell the operator when nothing loaded. */
function advice(attempts: Attempt[], env: NodeJS.ProcessEnv, glibc: string): string {
  const major = Number(process.versions.node.split('.')[0]);
  if (/^(1|true|True|TRUE)$/.test(env.UWS_USE_FALLBACK ?? '') && major === 20)
    return 'unset UWS_USE_FALLBACK (the JS stand-in cannot run the hub)';
  if (env.UWS_BUILD) return `unset UWS_BUILD (${env.UWS_BUILD}) or name a build that loads here`;
  if (process.platform === 'linux' && !glibc)
    return 'run on a glibc-based Linux (musl/Alpine has no build), e.g. the Debian-based container image';
  const btc = attempts.find((a) => a.candidate.id === 'btc-vision');
  if (btc && !btc.ok && btc.reason.includes('not installed') && major !== 20) {
    return 'run `npm install` without --omit=optional (the optional dependency @btc-vision/uwebsockets.js carries the Node 22/24/25 builds)';
  }
  const need = CANDIDATES.find((c) => c.id === 'btc-vision')?.glibc ?? '2.38';
  if (glibc && !versionAtLeast(glibc, need))
    return `use Node 20 on this system, or Node 20/22/24/25 on glibc >= ${need} (Debian 13, Ubuntu 24.04), or the container image`;
  return 'use Node 20, 22, 24 or 25 (see README, "Node versions and platforms")';
}

/** Loads the first native build that works; throws UwsUnavailableError (one line) when none does. */
export function loadUws(env: NodeJS.ProcessEnv = process.env): { uws: typeof Types; build: UwsBuild } {
  const wanted = env.UWS_BUILD ? env.UWS_BUILD.split(',').map((s) => s.trim()) : CANDIDATES.map((c) => c.id);
  const unknown = wanted.filter((id) => !CANDIDATES.some((c) => c.id === id));
  if (unknown.length) {
    throw new UwsUnavailableError(
      `election-hub: UWS_BUILD names unknown build ${unknown.join(', ')} (known: ${CANDIDATES.map((c) => c.id).join(', ')})`,
    );
  }
  const attempts: Attempt[] = [];
  for (const id of wanted) {
    const c = CANDIDATES.find((x) => x.id === id) as Candidate;
    const a = attempt(c, env);
    if (a.ok) return { uws: a.mod, build: a.build };
    attempts.push(a);
  }
  const glibc = glibcVersion();
  const where = `Node ${process.version} (ABI ${process.versions.modules}) on ${process.platform}-${process.arch}, ${glibc ? `glibc ${glibc}` : 'no glibc'}`;
  throw new UwsUnavailableError(
    `election-hub: no native uWebSockets.js build loads on ${where}: ${attempts.map((a) => (a.ok ? '' : a.reason)).join('; ')}; ` +
      `the hub never runs on a JS stand-in: ${advice(attempts, env, glibc)}`,
  );
}

/**
 * Completes a WebSocket upgrade whose checks finished after an await (outside any uWS callback),
 * without the cork() bug uNetworking/uWebSockets#1928 (fixed upstream by PR #1929, in neither build
 * above): a res.cork() that starts uncorked and upgrades inside goes on to read the HTTP response
 * state from memory the upgrade has just freed (the WebSocket shrinks the allocation in place);
 * when that memory was reused meanwhile, it closes the new socket and the client sees 1006 right
 * after the upgrade (seen with both builds, often with 20.57 under load). Inside another socket's
 * cork, res.cork() only tells uWS.js the writes are corked and calls back: the 101 response is
 * written directly and nothing reads freed memory. With no other socket open (`anyOpen` undefined)
 * the upgrade runs uncorked, and uWS.js prints its "must be made from within a corked callback"
 * warning for it. test/uws.test.ts reproduces the bug and checks both paths.
 */
export function upgradeAfterAwait(
  res: Types.HttpResponse,
  upgrade: () => void,
  anyOpen: Types.WebSocket<unknown> | undefined,
): void {
  if (!anyOpen) return upgrade();
  anyOpen.cork(() => res.cork(upgrade));
}

const loaded = loadUws();

/** The build in use, for the start-up log. */
export const uwsBuild: UwsBuild = loaded.build;

/** The loaded uWebSockets.js module (its types are those of the `uWebSockets.js` package). */
export const uWS: typeof Types = loaded.uws;
// Type names under the same identifier, so `uWS.WebSocket<T>` reads as it did with the package import.
// eslint-disable-next-line @typescript-eslint/no-namespace -- type-only merge with the value above (uWS.WebSocket<T> etc.)
export declare namespace uWS {
  type WebSocket<T> = Types.WebSocket<T>;
  type TemplatedApp = Types.TemplatedApp;
  type HttpResponse = Types.HttpResponse;
  type HttpRequest = Types.HttpRequest;
  type us_listen_socket = Types.us_listen_socket;
  type CompressOptions = Types.CompressOptions;
}
