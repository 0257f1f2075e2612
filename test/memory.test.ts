import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, seed, type TestDatabase } from './support/db.ts';
import { SECRET, token, waitUntil } from './support/hub.ts';
import { spawnHub, type HubProcess } from './support/hub-process.ts';
import { compare, decodeCursor, type Position } from '../src/events/position.ts';
import { commitFrontier, readAfter, sequenceCommits } from '../src/db/outbox.ts';

/*
 * Memory budgets, measured on a hub in its own process (RSS and V8 heap are per process):
 * stalled sockets must not make the hub buffer without bound, and a stream of large rows
 * must not fill the heap through the replay ring or the reader's pages.
 */

let db: TestDatabase;
let e1: number;
let c1: number;

beforeAll(async () => {
  db = await createTestDatabase('hub_memory');
  const s = await seed(db.pool, 1, 1);
  e1 = s.elections[0] as number;
  c1 = (s.committees.get(e1) as number[])[0] as number;
});
afterAll(async () => db?.drop());

const alive = (hub: HubProcess) => hub.child.exitCode === null && hub.child.signalCode === null;

/** Resident and peak resident memory of a process, in MB (Linux). */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

/**
 * A client that upgrades by hand and then stops reading (its TCP window fills, the hub
 * buffers). `resume()` reads again and records the close code the hub sent, if any.
 */
class StalledClient {
  readonly sock: net.Socket;
  readonly ready: Promise<void>;
  closeCode: number | undefined;
  ended = false;
  private pending = Buffer.alloc(0);
  private skip = 0;
  private upgraded = false;
  private parsing = false;

  constructor(port: number, jwt: string) {
    this.sock = net.connect({ host: '127.0.0.1', port });
    this.ready = new Promise((resolve, reject) => {
      this.sock.on('connect', () => {
        this.sock.write(
          `GET /ws?token=${jwt} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        );
      });
      this.sock.on('data', (chunk: Buffer) => {
        if (this.upgraded)
          return this.parsing ? this.frames(chunk) : void (this.pending = Buffer.concat([this.pending, chunk]));
        this.pending = Buffer.concat([this.pending, chunk]);
        const end = this.pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!this.pending.subarray(0, 12).toString('latin1').endsWith('101'))
          return reject(new Error(this.pending.subarray(0, 40).toString()));
        this.upgraded = true;
        this.pending = this.pending.subarray(end + 4);
        this.sock.pause(); // from here on the hub's frames pile up
        resolve();
      });
      this.sock.on('error', reject);
    });
    this.sock.on('error', () => undefined);
    this.sock.on('close', () => (this.ended = true));
  }

  resume() {
    this.parsing = true;
    const rest = this.pending;
    this.pending = Buffer.alloc(0);
    this.frames(rest);
    this.sock.resume();
  }

  /** Walks frame headers only (server frames are unmasked), keeping the close code. */
  private frames(chunk: Buffer) {
    const b = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let i = 0;
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, b.length - i);
        this.skip -= n;
        i += n;
        if (this.skip > 0) break;
      }
      if (b.length - i < 2) break;
      const op = (b[i] as number) & 0x0f;
      let len = (b[i + 1] as number) & 0x7f;
      let h = 2;
      if (len === 126) {
        if (b.length - i < 4) break;
        len = b.readUInt16BE(i + 2);
        h = 4;
      } else if (len === 127) {
        if (b.length - i < 10) break;
        len = Number(b.readBigUInt64BE(i + 2));
        h = 10;
      }
      if (op === 8) {
        if (b.length - i < h + len) break;
        this.closeCode = len >= 2 ? b.readUInt16BE(i + h) : 1005;
        i += h + len;
        continue;
      }
      i += h;
      this.skip = len;
    }
    this.pending = Buffer.from(b.subarray(i));
  }

  destroy() {
    this.sock.destroy();
  }
}

/**
 * A well-behaved client of election `e`: reads as fast as it can, and like the SDK resumes
 * from its last cursor after a 4008 (or any unexpected close).
 */
function healthyClient(port: number, jwt: string, e: number) {
  const state = {
    events: 0,
    ordered: true,
    closes: [] as number[],
    last: undefined as string | undefined,
    done: false,
    ws: undefined as WebSocket | undefined,
  };
  let lastPos: Position | undefined;
  let opened!: () => void;
  const ready = new Promise<void>((r) => (opened = r));
  const attach = (resume: boolean) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${jwt}${resume ? '&subscribe=none' : ''}`);
    state.ws = ws;
    ws.on('error', () => undefined);
    ws.on('open', () => {
      if (resume) ws.send(JSON.stringify({ type: 'subscribe', topics: [`election:${e}`], since: state.last }));
    });
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      if (text.startsWith('{"type":"connection_success"')) {
        state.last ??= (JSON.parse(text) as { cursor: string }).cursor;
        opened();
        return;
      }
      if (!text.startsWith('{"type":"guarantee_update"')) return;
      const at = text.lastIndexOf('"cursor":"');
      const cursor = text.slice(at + 10, text.indexOf('"', at + 10));
      const p = decodeCursor(cursor);
      if (!p || (lastPos && compare(p, lastPos) <= 0)) state.ordered = false;
      lastPos = p;
      state.last = cursor;
      state.events++;
    });
    ws.on('close', (code) => {
      state.closes.push(code);
      if (!state.done && state.ws === ws) setTimeout(() => attach(true), 50);
    });
  };
  attach(false);
  return {
    state,
    ready,
    close() {
      state.done = true;
      state.ws?.close();
    },
  };
}

describe('memory budgets', () => {
  it('outbox pages stop at a byte budget (a larger first row comes alone), compressed or not, and paging on skips nothing', async () => {
    const from: Position = { seq: await commitFrontier(db.pool), id: 0n };
    // 5 compressible rows of 100 KB (stored small by PostgreSQL), 5 incompressible ones, 5 small ones.
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, repeat(md5(g::text), 3125) FROM generate_series(1, 5) g`,
      [e1, c1],
    );
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name)
       SELECT $1, $2, (SELECT string_agg(md5(g::text || '.' || i::text), '') FROM generate_series(1, 3125) i) FROM generate_series(1, 5) g`,
      [e1, c1],
    );
    await db.pool.query(
      `INSERT INTO guarantees (election_id, committee_id, voter_name) SELECT $1, $2, 'small' FROM generate_series(1, 5)`,
      [e1, c1],
    );
    // Rows are read once they have their commit keys (no hub runs here: this test gives them).
    await sequenceCommits(db.pool);
    let all = await readAfter(db.pool, from, 1000);
    await waitUntil(
      async () => (await sequenceCommits(db.pool), (all = await readAfter(db.pool, from, 1000))).rows.length >= 15,
      30_000,
      'the 15 rows below the horizon',
    );
    expect(all.rows).toHaveLength(15);
    expect(all.more).toBe(false);

    // ~100 KB each: a 350 000-byte page takes four (the fifth would pass the budget).
    const page = await readAfter(db.pool, from, 1000, 350_000);
    expect(page.rows.map((r) => r.id)).toEqual(all.rows.slice(0, 4).map((r) => r.id));
    expect(page.more).toBe(true);
    // A budget below one row: that row alone, and more follow.
    const one = await readAfter(db.pool, from, 1000, 1000);
    expect(one.rows.map((r) => r.id)).toEqual([all.rows[0]?.id]);
    expect(one.more).toBe(true);
    // The row limit still binds.
    const three = await readAfter(db.pool, from, 3);
    expect(three.rows).toHaveLength(3);
    expect(three.more).toBe(true);

    // Paging through with the budget visits every row once, in order.
    const seen: unknown[] = [];
    let at: Position = from;
    for (let more = true; more;) {
      const r = await readAfter(db.pool, at, 1000, 250_000);
      expect(r.rows.length).toBeGreaterThan(0);
      for (const row of r.rows) seen.push(row.id);
      const last = r.rows[r.rows.length - 1] as { seq: string; id: string };
      at = { seq: BigInt(last.seq), id: BigInt(last.id) };
      more = r.more;
    }
    expect(seen).toEqual(all.rows.map((r) => r.id));
  });

  it.each([
    ['their own limit (MAX_BACKPRESSURE_BYTES, 1 MiB)', {}],
    [
      'the global budget (MAX_TOTAL_BUFFERED_BYTES 32 MiB, per-socket limit 64 MiB)',
      { MAX_BACKPRESSURE_BYTES: String(64 * 1024 * 1024), MAX_TOTAL_BUFFERED_BYTES: String(32 * 1024 * 1024) },
    ],
  ] as const)(
    '100 sockets that stop reading and one 20 MB statement (200 rows of 100 KB), closed by %s: all 100 get 4008, the healthy one gets every row, the hub peak RSS stays under 500 MB (it was 1.7 GB)',
    async (_what, env) => {
      const hub = await spawnHub({ DATABASE_URL: db.url, JWT_SECRET: SECRET, ...env });
      const stalled: StalledClient[] = [];
      let healthy: ReturnType<typeof healthyClient> | undefined;
      try {
        const tokens = await Promise.all(
          Array.from({ length: 100 }, (_, i) => token({ sub: `stalled-${i}`, elections: [e1] })),
        );
        for (const t of tokens) stalled.push(new StalledClient(hub.port, t));
        await Promise.all(stalled.map((s) => s.ready));
        healthy = healthyClient(hub.port, await token({ sub: 'healthy', elections: [e1] }), e1);
        await healthy.ready;
        const pid = hub.child.pid as number;
        const before = memoryOf(pid);

        // 200 rows of 100 000 characters each, hard to compress (as real row text would be).
        await db.pool.query(
          `INSERT INTO guarantees (election_id, committee_id, voter_name)
         SELECT $1, $2, (SELECT string_agg(md5(g::text || '.' || i::text), '') FROM generate_series(1, 3125) i) FROM generate_series(1, 200) g`,
          [e1, c1],
        );
        const h = healthy;
        await waitUntil(() => h.state.events >= 200, 60_000, `the healthy client's 200 rows (has ${h.state.events})`);
        const after = memoryOf(pid);
        console.log(
          `stalled: RSS before ${before.rss.toFixed(0)} MB, peak ${after.peak.toFixed(0)} MB (peak before the statement ${before.peak.toFixed(0)} MB); ` +
            `healthy client closes: ${h.state.closes.join(',') || 'none'}`,
        );
        expect(h.state.events).toBe(200);
        expect(h.state.ordered).toBe(true);

        expect(after.peak).toBeLessThan(500);

        // /admin/health shows the budgets and what they hold.
        const admin = await token({ sub: 'memory-admin', role: 'admin' });
        const health = (await (
          await fetch(`${hub.url}/admin/health`, { headers: { authorization: `Bearer ${admin}` } })
        ).json()) as {
          connections: number;
          memory: {
            ring: { events: number; bytes: number; max_bytes: number };
            buffered: { bytes: number; max_bytes: number };
            heap_used_bytes: number;
            rss_bytes: number;
          };
        };
        const budget = Number(
          (env as { MAX_TOTAL_BUFFERED_BYTES?: string }).MAX_TOTAL_BUFFERED_BYTES ?? 256 * 1024 * 1024,
        );
        expect(health.memory.ring.max_bytes).toBe(64 * 1024 * 1024);
        expect(health.memory.ring.events).toBeGreaterThanOrEqual(200);
        expect(health.memory.ring.bytes).toBeGreaterThan(200 * 100_000);
        expect(health.memory.buffered.max_bytes).toBe(budget);
        expect(health.memory.buffered.bytes).toBeLessThanOrEqual(budget);
        expect(health.memory.rss_bytes).toBeGreaterThan(health.memory.heap_used_bytes);
        // Each stalled socket got 20 MB, far over its own limit: all closed. Under the global
        // budget only as many as had to go (the most buffered first): here nearly all.
        const closedByHub = 100 - (health.connections - 1);
        expect(closedByHub).toBeGreaterThanOrEqual('MAX_TOTAL_BUFFERED_BYTES' in env ? 90 : 100);

        // Reading again, each closed client finds its backlog and then the 4008 close frame.
        for (const s of stalled) s.resume();
        await waitUntil(
          () => stalled.filter((s) => s.closeCode !== undefined || s.ended).length >= closedByHub,
          30_000,
          'the closed clients to see their close',
        );
        const codes = stalled.map((s) => s.closeCode ?? (s.ended ? -1 : 0));
        expect(codes.filter((c) => c === 4008)).toHaveLength(closedByHub);
        expect(codes.filter((c) => c !== 4008 && c !== 0)).toEqual([]);
        console.log(`stalled: ${closedByHub} of 100 closed with 4008`);
      } finally {
        healthy?.close();
        for (const s of stalled) s.destroy();
        await hub.stop();
      }
    },
    180_000,
  );

  it('600 MB of 150 KB rows through one healthy reader with a 128 MB V8 heap: the hub does not crash and the reader gets every row', async () => {
    const hub = await spawnHub({ DATABASE_URL: db.url, JWT_SECRET: SECRET, NODE_OPTIONS: '--max-old-space-size=128' });
    let healthy: ReturnType<typeof healthyClient> | undefined;
    try {
      healthy = healthyClient(hub.port, await token({ sub: 'heap-reader', elections: [e1] }), e1);
      await healthy.ready;
      const rows = 4000; // × 150 KB = 600 MB
      const perStatement = 20;
      for (let i = 0; i < rows / perStatement && alive(hub); i++) {
        // Compressible text: PostgreSQL stores it small, the hub still handles 150 KB per row.
        await db.pool.query(
          `INSERT INTO guarantees (election_id, committee_id, voter_name)
           SELECT $1, $2, repeat(md5($3::text || '.' || g::text), 4688) FROM generate_series(1, $4::int) g`,
          [e1, c1, i, perStatement],
        );
      }
      const h = healthy;
      await waitUntil(
        () => h.state.events >= rows || !alive(hub),
        120_000,
        `the reader's ${rows} rows (has ${h.state.events})`,
      );
      const mem = alive(hub) ? memoryOf(hub.child.pid as number) : undefined;
      console.log(
        `heap: exit ${String(hub.child.exitCode ?? hub.child.signalCode)}, ${h.state.events} rows received, peak RSS ${mem?.peak.toFixed(0) ?? '-'} MB, closes: ${h.state.closes.join(',') || 'none'}`,
      );
      expect(alive(hub)).toBe(true);
      expect(h.state.events).toBe(rows);
      expect(h.state.ordered).toBe(true);
    } finally {
      healthy?.close();
      await hub.stop();
    }
  }, 300_000);
});
