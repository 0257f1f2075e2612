// permessage-deflate (WS_COMPRESSION): negotiated only with clients that offer it, the same
// frames either way, fewer bytes on the wire for those that do.
import WebSocket from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/index.ts';
import type { Hub } from '../src/main.ts';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { SECRET, startTestHub, token, waitUntil } from './support/hub.ts';

let db: TestDatabase;
let e1: number;
let c1: number;
const hubs: Hub[] = [];
const sockets: WebSocket[] = [];

beforeAll(async () => {
  db = await createTestDatabase('hub_compression');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
});

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await Promise.all(hubs.splice(0).map((h) => h.stop()));
});

afterAll(async () => {
  await db?.drop();
});

type Opened = {
  ws: WebSocket;
  extensions: string;
  wire: () => number;
  frames: Array<{ type: string; [k: string]: unknown }>;
};

/** A `ws` client (offering permessage-deflate or not) that counts the bytes it reads off the socket. */
async function open(hub: Hub, offer: boolean): Promise<Opened> {
  const jwt = await token({ sub: `viewer-${offer}`, elections: [e1] });
  const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws`, [`bearer.${jwt}`], { perMessageDeflate: offer });
  sockets.push(ws);
  let extensions = '';
  let wire = 0;
  const frames: Opened['frames'] = [];
  ws.on('upgrade', (res) => {
    extensions = String(res.headers['sec-websocket-extensions'] ?? '');
  });
  ws.on('message', (d) => frames.push(JSON.parse(d.toString()) as Opened['frames'][number]));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  // Counted from here (a listener added during the upgrade would take the socket's first bytes from ws).
  (ws as unknown as { _socket: NodeJS.ReadableStream })._socket.on('data', (b: Buffer) => (wire += b.length));
  await waitUntil(() => frames.some((f) => f.type === 'connection_success'), 10_000, 'connection_success');
  return { ws, extensions, wire: () => wire, frames };
}

/** Writes rows with realistic, repetitive content; returns their ids. */
async function writeRows(n: number, name = (i: number) => `Voter ${i} Al-Mutairi`): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = await db.pool.query<{ id: number }>(
      `INSERT INTO guarantees (election_id, committee_id, voter_name, status) VALUES ($1, $2, $3, 'pledged') RETURNING id`,
      [e1, c1, name(i)],
    );
    ids.push(Number(r.rows[0]?.id));
  }
  return ids;
}

const rows = (o: Opened) => o.frames.filter((f) => f.type === 'guarantee_update');

describe('WS_COMPRESSION', () => {
  it('is validated: off, shared, dedicated and dedicated-<n>kb; anything else is a configuration error', () => {
    const base = { DATABASE_URL: 'postgres://x@127.0.0.1/x', JWT_SECRET: SECRET };
    for (const v of ['off', 'shared', 'dedicated', 'dedicated-4kb', 'dedicated-256kb']) {
      const r = parseConfig({ ...base, WS_COMPRESSION: v });
      expect(r.ok && r.config.WS_COMPRESSION).toBe(v);
    }
    const bad = parseConfig({ ...base, WS_COMPRESSION: 'gzip' });
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.errors.join('\n')).toMatch(/^WS_COMPRESSION: /m);
    const dflt = parseConfig(base);
    expect(dflt.ok && dflt.config.WS_COMPRESSION).toBe('shared');
    expect(dflt.ok && dflt.config.WS_COMPRESSION_MIN_BYTES).toBe(1024);
    expect(parseConfig({ ...base, WS_COMPRESSION_MIN_BYTES: '-1' }).ok).toBe(false);
  });

  for (const mode of ['shared', 'dedicated'] as const) {
    it(`${mode}: negotiated with a client that offers it, not with one that does not; same frames, fewer bytes`, async () => {
      const hub = await startTestHub(db.url, { WS_COMPRESSION: mode, WS_COMPRESSION_MIN_BYTES: '0' });
      hubs.push(hub);
      const deflate = await open(hub, true);
      const plain = await open(hub, false);
      expect(deflate.extensions).toMatch(/^permessage-deflate\b/);
      if (mode === 'shared') expect(deflate.extensions).toContain('server_no_context_takeover');
      else expect(deflate.extensions).toMatch(/server_max_window_bits=\d+/);
      expect(plain.extensions).toBe('');
      const w0 = [deflate.wire(), plain.wire()];

      const ids = await writeRows(40);
      await waitUntil(
        () => rows(deflate).length === ids.length && rows(plain).length === ids.length,
        15_000,
        'the rows on both sockets',
      );
      // The same frames, decoded.
      expect(rows(deflate)).toEqual(rows(plain));
      expect(rows(deflate).map((f) => f.id)).toEqual(ids);
      const deflated = deflate.wire() - (w0[0] ?? 0);
      const raw = plain.wire() - (w0[1] ?? 0);
      // Row events are ~300-byte JSON objects with the same keys: deflate saves at least a third.
      expect(deflated).toBeLessThan(raw * (2 / 3));

      // Client frames arrive compressed too (the client compresses what it sends).
      deflate.ws.send(JSON.stringify({ type: 'ping' }));
      await waitUntil(() => deflate.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    });
  }

  it('WS_COMPRESSION_MIN_BYTES: smaller frames go as they are, larger ones deflated', async () => {
    const hub = await startTestHub(db.url, { WS_COMPRESSION: 'shared', WS_COMPRESSION_MIN_BYTES: '1024' });
    hubs.push(hub);
    const deflate = await open(hub, true);
    const plain = await open(hub, false);
    expect(deflate.extensions).toMatch(/^permessage-deflate\b/);
    const wire = () => [deflate.wire(), plain.wire()] as const;

    // ~300-byte row events: the same bytes on both sockets.
    const [d0, p0] = wire();
    const small = await writeRows(20);
    await waitUntil(
      () => rows(deflate).length === small.length && rows(plain).length === small.length,
      15_000,
      'small rows',
    );
    const [d1, p1] = wire();
    expect(d1 - d0).toBe(p1 - p0);

    // Rows of ~3 KB (a long, repetitive name): deflated.
    const big = await writeRows(5, (i) => `Voter ${i} ${'Al-Mutairi '.repeat(300)}`);
    await waitUntil(
      () => rows(deflate).length === small.length + big.length && rows(plain).length === small.length + big.length,
      15_000,
      'big rows',
    );
    const [d2, p2] = wire();
    expect(d2 - d1).toBeLessThan((p2 - p1) / 4);
    expect(rows(deflate)).toEqual(rows(plain));
  });

  it('off: never negotiated, whatever the client offers', async () => {
    const hub = await startTestHub(db.url, { WS_COMPRESSION: 'off' });
    hubs.push(hub);
    const offered = await open(hub, true);
    expect(offered.extensions).toBe('');
    const ids = await writeRows(3);
    await waitUntil(() => rows(offered).length === ids.length, 10_000, 'rows');
  });
});
