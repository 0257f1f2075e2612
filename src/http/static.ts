import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants as zlib, gzipSync } from 'node:zlib';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The page's sources (web/) and the SDK it bundles (client/). */
const WEB_DIR = path.join(ROOT, 'web');
const CLIENT_DIR = path.join(ROOT, 'client');
/** Where the built page is served from. */
export const WEB_DIST = path.join(WEB_DIR, 'dist');
/** The page's files; each is written with `.gz` and `.br` beside it (when smaller). */
const PAGE_FILES = ['app.js', 'app.css', 'index.html'];
/** What a build writes; index.html is renamed into place last, so its presence means a complete build. */
const OUTPUTS = ['app.js', 'app.css', 'build.json', ...PAGE_FILES.flatMap((f) => [`${f}.gz`, `${f}.br`]), 'index.html'];

export type WebBuildMode = 'production' | 'development';
export type WebBuildResult = { built: boolean; reason: string; outDir: string };

/** One file of the page, in every encoding it is served in, with the hash of its content. */
export type StaticFile = {
  readonly contentType: string;
  readonly identity: Buffer;
  readonly gzip: Buffer | undefined;
  readonly br: Buffer | undefined;
  /** First 16 hex digits of the content's SHA-256: the ETag and the `?v=` of index.html's links. */
  readonly hash: string;
};
/** The page's files by URL path (`/`, `/app.js`, `/app.css`); undefined when there is none. */
export type StaticFiles = (urlPath: string) => StaticFile | undefined;

export const contentHash = (body: Buffer) => createHash('sha256').update(body).digest('hex').slice(0, 16);

const gzip = (body: Buffer) => gzipSync(body, { level: 9 });
const brotli = (body: Buffer) =>
  brotliCompressSync(body, {
    params: {
      [zlib.BROTLI_PARAM_QUALITY]: 11,
      [zlib.BROTLI_PARAM_MODE]: zlib.BROTLI_MODE_TEXT,
      [zlib.BROTLI_PARAM_SIZE_HINT]: body.length,
    },
  });
/** A compressed variant only when it is smaller. */
const smaller = (body: Buffer, packed: Buffer | undefined) =>
  packed && packed.length < body.length ? packed : undefined;

/**
 * A page file from its content. `pre` are variants compressed at build time; missing ones are
 * compressed here, once (the demo's index.html with its directory block is made at start).
 */
export function staticFile(
  body: Buffer,
  contentType: string,
  pre: { gzip?: Buffer | undefined; br?: Buffer | undefined } = {},
): StaticFile {
  return {
    contentType,
    identity: body,
    gzip: smaller(body, pre.gzip ?? gzip(body)),
    br: smaller(body, pre.br ?? brotli(body)),
    hash: contentHash(body),
  };
}

/**
 * Builds the dashboard page: bundles web/app.ts (and the client SDK it imports) into
 * web/dist/app.js with esbuild, minifies app.css into it, and writes index.html with links
 * that carry each asset's content hash (`app.js?v=<hash>`), so those responses can be cached
 * for a year while index.html is revalidated. Every file also gets a gzip and a brotli copy
 * beside it (served by Accept-Encoding). `production` (the default): minified, no source map;
 * `development` (`npm run build:web -- --dev`): readable, with an inline source map.
 * Without `force` it only builds when web/dist is missing, of the other mode, or older than a
 * source file, so `serve` and the demo can call it at every start. Synchronous (esbuild's
 * buildSync) because the static file handler is; a build takes about a second. The files are
 * written to a temporary directory and renamed into place, so a reader never sees half a build.
 */
export function buildWeb(
  opts: { force?: boolean; webDir?: string; outDir?: string; mode?: WebBuildMode } = {},
): WebBuildResult {
  const webDir = opts.webDir ?? WEB_DIR;
  const outDir = opts.outDir ?? path.join(webDir, 'dist');
  const mode = opts.mode ?? 'production';
  const dev = mode === 'development';
  const entry = path.join(webDir, 'app.ts');
  if (!existsSync(entry)) return { built: false, reason: `no sources (${entry} is missing)`, outDir };
  let reason = 'forced';
  if (!opts.force) {
    const stale = staleness(webDir, outDir, mode);
    if (stale === undefined) return { built: false, reason: 'up to date', outDir };
    reason = stale;
  }
  // esbuild comes with tsx (a runtime dependency); loaded only when a build is needed.
  const esbuild = createRequire(import.meta.url)('esbuild') as typeof import('esbuild');
  const tmp = `${outDir}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    const common = {
      bundle: true,
      minify: !dev,
      legalComments: 'none',
      logLevel: 'silent',
      sourcemap: dev ? 'inline' : false,
    } as const;
    esbuild.buildSync({
      ...common,
      entryPoints: [entry],
      format: 'esm',
      platform: 'browser',
      target: ['es2022'],
      outfile: path.join(tmp, 'app.js'),
    });
    esbuild.buildSync({
      ...common,
      entryPoints: [path.join(webDir, 'app.css')],
      target: ['chrome100', 'firefox100', 'safari15'],
      outfile: path.join(tmp, 'app.css'),
    });
    const hashes = Object.fromEntries(
      ['app.js', 'app.css'].map((f) => [f, contentHash(readFileSync(path.join(tmp, f)))]),
    );
    let html = readFileSync(path.join(webDir, 'index.html'), 'utf8');
    for (const [f, h] of Object.entries(hashes)) {
      const linked = html.replace(new RegExp(`(["'])\\./${f.replace('.', '\\.')}\\1`, 'g'), `$1./${f}?v=${h}$1`);
      if (linked === html) throw new Error(`web/index.html does not link ./${f}`);
      html = linked;
    }
    writeFileSync(path.join(tmp, 'index.html'), html);
    for (const f of PAGE_FILES) {
      const body = readFileSync(path.join(tmp, f));
      writeFileSync(path.join(tmp, `${f}.gz`), gzip(body));
      writeFileSync(path.join(tmp, `${f}.br`), brotli(body));
    }
    writeFileSync(path.join(tmp, 'build.json'), `${JSON.stringify({ mode, hashes }, null, 2)}\n`);
    mkdirSync(outDir, { recursive: true });
    for (const name of OUTPUTS) renameSync(path.join(tmp, name), path.join(outDir, name));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { built: true, reason, outDir };
}

/** undefined when every output exists, is of `mode` and newer than every source; else why not. */
function staleness(webDir: string, outDir: string, mode: WebBuildMode): string | undefined {
  let oldestOutput = Infinity;
  for (const name of OUTPUTS) {
    const file = path.join(outDir, name);
    if (!existsSync(file)) return `${file} is missing`;
    oldestOutput = Math.min(oldestOutput, statSync(file).mtimeMs);
  }
  try {
    const built = (JSON.parse(readFileSync(path.join(outDir, 'build.json'), 'utf8')) as { mode?: string }).mode;
    if (built !== mode) return `a ${built ?? 'unknown'} build, ${mode} wanted`;
  } catch {
    return 'build.json is unreadable';
  }
  for (const file of [...sourcesIn(webDir), ...sourcesIn(CLIENT_DIR)]) {
    if (statSync(file).mtimeMs > oldestOutput) return `${file} changed`;
  }
  return undefined;
}

function sourcesIn(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (entry.name === 'dist' || entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
      out.push(...sourcesIn(path.join(dir, entry.name)));
    } else if (/\.(ts|html|css)$/.test(entry.name)) {
      out.push(path.join(dir, entry.name));
    }
  }
  return out;
}

/**
 * Serves the dashboard page built into web/dist (read once per request path, then kept, with
 * its precompressed variants; a variant older than its file is ignored and compressed again).
 * For the default directory the page is built first when it is missing or stale (a clone that
 * never ran `npm run build:web`); a failed build leaves the routes answering 404.
 */
export function staticFilesFrom(
  dir = WEB_DIST,
  opts: { build?: boolean; log?: (msg: string) => void } = {},
): StaticFiles {
  const log = opts.log ?? ((msg: string) => process.stderr.write(`${msg}\n`));
  if (opts.build ?? path.resolve(dir) === WEB_DIST) {
    try {
      const r = buildWeb();
      if (r.built) log(`dashboard page built into ${r.outDir} (${r.reason})`);
    } catch (err) {
      // A read-only install (the container image) serves whatever is there, or 404.
      log(`dashboard page not built: ${(err as Error).message}`);
    }
  }
  const base = dir.endsWith(path.sep) ? dir : dir + path.sep;
  const cache = new Map<string, StaticFile>();
  return (urlPath) => {
    const name = urlPath === '/' ? 'index.html' : urlPath.slice(1);
    const hit = cache.get(name);
    if (hit) return hit;
    const file = base + name;
    if (!/^[a-z0-9_-]+\.(html|js|css)$/i.test(name) || !existsSync(file)) return undefined;
    const mtime = statSync(file).mtimeMs;
    const variant = (suffix: string) =>
      existsSync(file + suffix) && statSync(file + suffix).mtimeMs >= mtime ? readFileSync(file + suffix) : undefined;
    const ext = name.slice(name.lastIndexOf('.'));
    const entry = staticFile(readFileSync(file), TYPES[ext] ?? 'application/octet-stream', {
      gzip: variant('.gz'),
      br: variant('.br'),
    });
    cache.set(name, entry);
    return entry;
  };
}

export type StaticRequest = {
  /** The request's Accept-Encoding, If-None-Match, and its `?v=` (index.html's links carry the content hash). */
  acceptEncoding: string;
  ifNoneMatch: string;
  version: string | undefined;
};
export type StaticReply = { status: 200 | 304; headers: Array<[string, string]>; body: Buffer | undefined };

/** q-values of Accept-Encoding (RFC 9110 12.5.3): `br` if acceptable, else `gzip`, else identity. */
export function chooseEncoding(acceptEncoding: string): 'br' | 'gzip' | 'identity' {
  const q = new Map<string, number>();
  for (const part of acceptEncoding.toLowerCase().split(',')) {
    const [token, ...params] = part.trim().split(';');
    if (!token) continue;
    const qp = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    const value = qp === undefined ? 1 : Number(qp.slice(2));
    q.set(token.trim(), Number.isFinite(value) ? value : 0);
  }
  const accepts = (enc: string) =>
    (q.get(enc) ?? (enc === 'x-gzip' ? undefined : q.get('*')) ?? 0) > 0 ||
    (enc === 'gzip' && (q.get('x-gzip') ?? 0) > 0);
  if (accepts('br')) return 'br';
  if (accepts('gzip')) return 'gzip';
  return 'identity';
}

/**
 * The response for one page file: the encoding the client accepts (brotli, then gzip), a strong
 * ETag per encoding, 304 when If-None-Match names it, and Cache-Control: index.html and any
 * asset fetched without its current `?v=` are revalidated every time (`no-cache`); an asset
 * fetched with its content hash never changes and is cached for a year (`immutable`).
 */
export function staticReply(file: StaticFile, req: StaticRequest): StaticReply {
  const encoding = chooseEncoding(req.acceptEncoding);
  const body = (encoding === 'br' ? file.br : encoding === 'gzip' ? file.gzip : undefined) ?? file.identity;
  const used = body === file.identity ? 'identity' : encoding;
  const etag = `"${file.hash}${used === 'identity' ? '' : `-${used === 'gzip' ? 'gz' : 'br'}`}"`;
  const headers: Array<[string, string]> = [
    ['ETag', etag],
    ['Cache-Control', req.version === file.hash ? 'public, max-age=31536000, immutable' : 'no-cache'],
    ['Vary', 'Accept-Encoding'],
  ];
  // If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ prefixes do not matter.
  const tags = req.ifNoneMatch.split(',').map((t) => t.trim().replace(/^W\//, ''));
  if (tags.includes('*') || tags.includes(etag)) return { status: 304, headers, body: undefined };
  headers.push(['Content-Type', file.contentType], ['X-Content-Type-Options', 'nosniff']);
  if (used !== 'identity') headers.push(['Content-Encoding', used]);
  return { status: 200, headers, body };
}
