// The dashboard page's assets: built minified without a source map, precompressed, and served
// with the encoding the client accepts, a strong ETag per encoding (304 on If-None-Match) and
// Cache-Control (index.html revalidated, hashed asset links cached for a year).
import { request } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Hub } from '../src/main.ts';
import { buildWeb, chooseEncoding, contentHash, staticFilesFrom } from '../src/http/static.ts';
import { createTestDatabase, type TestDatabase } from './support/db.ts';
import { startTestHub } from './support/hub.ts';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(path.join(tmpdir(), 'hub-web-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A raw GET (fetch would negotiate and decompress by itself). */
function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('building the page', () => {
  let prod = '';
  let dev = '';
  beforeAll(() => {
    prod = tempDir();
    dev = tempDir();
    expect(buildWeb({ force: true, outDir: prod }).built).toBe(true);
    expect(buildWeb({ force: true, outDir: dev, mode: 'development' }).built).toBe(true);
  });
  const read = (dir: string, f: string) => readFileSync(path.join(dir, f));

  it('minifies app.js and app.css and leaves out the source map in production', () => {
    const js = read(prod, 'app.js');
    expect(js.toString()).not.toContain('sourceMappingURL');
    expect(read(dev, 'app.js').toString()).toContain('sourceMappingURL=data:application/json');
    // Minified: a fraction of the readable build with its inline map (125 KB before this change).
    expect(js.length).toBeLessThan(read(dev, 'app.js').length / 4);
    expect(js.length).toBeLessThan(40_000);
    expect(read(prod, 'app.css').length).toBeLessThan(read(dev, 'app.css').length);
  });

  it('writes gzip and brotli copies that decompress to the file, smaller than it', () => {
    for (const f of ['app.js', 'app.css', 'index.html']) {
      const body = read(prod, f);
      const gz = read(prod, `${f}.gz`);
      const br = read(prod, `${f}.br`);
      expect(gunzipSync(gz).equals(body), f).toBe(true);
      expect(brotliDecompressSync(br).equals(body), f).toBe(true);
      expect(br.length, f).toBeLessThan(body.length / 2);
    }
  });

  it('links the assets from index.html with their content hash', () => {
    const html = read(prod, 'index.html').toString();
    expect(html).toContain(`src="./app.js?v=${contentHash(read(prod, 'app.js'))}"`);
    expect(html).toContain(`href="./app.css?v=${contentHash(read(prod, 'app.css'))}"`);
  });

  it('rebuilds only when stale or of the other mode', () => {
    expect(buildWeb({ outDir: prod })).toMatchObject({ built: false, reason: 'up to date' });
    expect(buildWeb({ outDir: prod, mode: 'development' })).toMatchObject({
      built: true,
      reason: 'a production build, development wanted',
    });
  });
});

describe('Accept-Encoding', () => {
  it.each([
    ['gzip, deflate, br, zstd', 'br'],
    ['gzip, deflate', 'gzip'],
    ['br;q=0, gzip;q=0.5', 'gzip'],
    ['gzip;q=0, br;q=0', 'identity'],
    ['', 'identity'],
    ['identity', 'identity'],
    ['*', 'br'],
    ['br;q=0, *', 'gzip'],
    ['x-gzip', 'gzip'],
  ])('%j -> %s', (header, expected) => {
    expect(chooseEncoding(header)).toBe(expected);
  });
});

describe('serving the page', () => {
  let db: TestDatabase | undefined;
  let hub: Hub | undefined;
  let dist = '';
  let jsHash = '';

  beforeAll(async () => {
    dist = tempDir();
    buildWeb({ force: true, outDir: dist });
    jsHash = contentHash(readFileSync(path.join(dist, 'app.js')));
    db = await createTestDatabase('hub_static', { schema: 'hub' });
    hub = await startTestHub(db.url, {}, { staticFiles: staticFilesFrom(dist, { build: false }) });
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('sends brotli, gzip or identity as accepted, each with its own ETag and Vary', async () => {
    const identity = readFileSync(path.join(dist, 'app.js'));
    const br = await get(`${hub?.url}/app.js`, { 'accept-encoding': 'gzip, deflate, br' });
    expect(br.status).toBe(200);
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(br.headers.vary).toBe('Accept-Encoding');
    expect(br.headers.etag).toBe(`"${jsHash}-br"`);
    expect(brotliDecompressSync(br.body).equals(identity)).toBe(true);
    expect(br.body.length).toBeLessThan(identity.length / 2);

    const gz = await get(`${hub?.url}/app.js`, { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gz.headers.etag).toBe(`"${jsHash}-gz"`);
    expect(gunzipSync(gz.body).equals(identity)).toBe(true);

    const plain = await get(`${hub?.url}/app.js`);
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.headers.etag).toBe(`"${jsHash}"`);
    expect(plain.body.equals(identity)).toBe(true);
  });

  it('answers 304 without a body when If-None-Match names the ETag of what it would send', async () => {
    const first = await get(`${hub?.url}/app.js`, { 'accept-encoding': 'br' });
    const etag = String(first.headers.etag);
    const again = await get(`${hub?.url}/app.js`, { 'accept-encoding': 'br', 'if-none-match': etag });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
    expect(again.headers.etag).toBe(etag);
    expect(
      (await get(`${hub?.url}/app.js`, { 'accept-encoding': 'br', 'if-none-match': `"other", W/${etag}` })).status,
    ).toBe(304);
    // Another encoding is another representation: sent in full.
    expect((await get(`${hub?.url}/app.js`, { 'accept-encoding': 'gzip', 'if-none-match': etag })).status).toBe(200);
    expect((await get(`${hub?.url}/app.js`, { 'if-none-match': '"stale"' })).status).toBe(200);
    const page = await get(`${hub?.url}/`, { 'accept-encoding': 'br' });
    expect(
      (await get(`${hub?.url}/`, { 'accept-encoding': 'br', 'if-none-match': String(page.headers.etag) })).status,
    ).toBe(304);
  });

  it('revalidates index.html and unversioned assets; caches hashed asset links for a year', async () => {
    const page = await get(`${hub?.url}/`, { 'accept-encoding': 'br' });
    expect(page.headers['cache-control']).toBe('no-cache');
    const html = brotliDecompressSync(page.body).toString();
    const link = /src="\.\/(app\.js\?v=[0-9a-f]+)"/.exec(html)?.[1];
    expect(link).toBe(`app.js?v=${jsHash}`);
    expect((await get(`${hub?.url}/${link}`)).headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect((await get(`${hub?.url}/app.js`)).headers['cache-control']).toBe('no-cache');
    expect((await get(`${hub?.url}/app.js?v=0000000000000000`)).headers['cache-control']).toBe('no-cache');
    const css = /href="\.\/(app\.css\?v=[0-9a-f]+)"/.exec(html)?.[1];
    const styled = await get(`${hub?.url}/${css}`, { 'accept-encoding': 'gzip' });
    expect(styled.headers['content-type']).toBe('text/css; charset=utf-8');
    expect(styled.headers['cache-control']).toBe('public, max-age=31536000, immutable');
  });
});
