/*
 * permessage-deflate in isolation: a uWebSockets.js server with the hub's socket options and
 * its compression setting (WS_COMPRESSION, mapped by the hub's own compressionOption), that
 * publishes hub-shaped frames (bench/lib/frames.ts) with the hub's compress flag: row events
 * on `rows` and dashboard updates on `dash`, paced like an election night. A socket picks its
 * topics with `?topics=rows,dash` (a whole-election dashboard) or `?topics=dash` (totals only).
 * No database and no authentication: what is measured is uWS's compression per delivery.
 */
import uWS from 'uWebSockets.js';
import { WS_COMPRESSION_MODES, type WsCompression } from '../../src/config/index.ts';
import { compressionOption } from '../../src/hub/server.ts';
import { sleep } from '../lib/clock.ts';
import { dashboardFrames, rowFrames } from '../lib/frames.ts';
import { notify, serve } from '../lib/rpc.ts';

const mode = (process.env.WS_COMPRESSION ?? 'off') as WsCompression;
/** Frames below this many bytes are sent uncompressed (WS_COMPRESSION_MIN_BYTES). */
const minBytes = Number(process.env.WS_COMPRESSION_MIN_BYTES ?? '0');
if (!(WS_COMPRESSION_MODES as readonly string[]).includes(mode)) throw new Error(`WS_COMPRESSION: ${mode}?`);

let connections = 0;
let negotiated = 0;
let listenSocket: uWS.us_listen_socket | undefined;
const COMMITTEES = 300;
const rows = rowFrames({ election: 1, firstCommittee: 1, committees: COMMITTEES });
const dash = dashboardFrames({ election: 1, firstCommittee: 1, committees: COMMITTEES });

type Data = { topics: string[] };
const app = uWS.App().ws<Data>('/*', {
  compression: compressionOption(mode),
  maxPayloadLength: 1024 * 1024,
  idleTimeout: 120,
  sendPingsAutomatically: true,
  maxBackpressure: 64 * 1024 * 1024,
  upgrade: (res, req, context) => {
    const topics = (new URLSearchParams(req.getQuery() ?? '').get('topics') ?? 'rows,dash').split(',');
    const ext = req.getHeader('sec-websocket-extensions');
    if (ext && mode !== 'off') negotiated++;
    res.upgrade({ topics }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'), ext, context);
  },
  open: (ws) => {
    connections++;
    for (const t of ws.getUserData().topics) ws.subscribe(t);
    // The first dashboard frame of a subscriber is the full state, as the hub sends it.
    const full = dash.full();
    ws.send(full, false, full.length >= minBytes);
  },
  close: () => {
    connections--;
  },
});

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

const api = {
  /**
   * Publishes for `seconds`: `rowsPerSecond` row events (in ticks of 10 ms, as outbox pages
   * arrive) and a coalesced dashboard delta every `debounceMs` (either may be left out, to
   * measure the other's cost alone; the rows still move the counts). Returns what was
   * published and the CPU seconds this process used meanwhile (uWS's sends and deflates included).
   */
  async run(a: {
    seconds: number;
    rowsPerSecond: number;
    debounceMs: number;
    publishRows: boolean;
    publishUpdates: boolean;
  }) {
    const c0 = cpu();
    const t0 = Date.now();
    const published = { rows: 0, rowBytes: 0, updates: 0, updateBytes: 0 };
    let nextUpdate = t0 + a.debounceMs;
    let generated = 0;
    const subs = { rows: app.numSubscribers('rows'), dash: app.numSubscribers('dash') };
    for (let tick = 1; ; tick++) {
      const due = t0 + tick * 10;
      const now = Date.now();
      if (now >= t0 + a.seconds * 1000) break;
      const want = Math.floor(((now - t0) / 1000) * a.rowsPerSecond) - generated;
      generated += Math.max(0, want);
      for (let i = 0; i < want; i++) {
        const r = rows.next(now);
        dash.touch(r.committee);
        if (!a.publishRows) continue;
        app.publish('rows', r.frame, false, r.frame.length >= minBytes);
        published.rows++;
        published.rowBytes += r.frame.length;
      }
      if (now >= nextUpdate) {
        nextUpdate += a.debounceMs;
        const d = dash.delta();
        if (d && a.publishUpdates) {
          app.publish('dash', d, false, d.length >= minBytes);
          published.updates++;
          published.updateBytes += d.length;
        }
      }
      await sleep(Math.max(0, due - Date.now()));
    }
    // Let uWS drain what it queued before the CPU is read.
    await sleep(200);
    const seconds = (Date.now() - t0) / 1000;
    const used = cpu() - c0;
    return { ...published, subs, seconds, cpuSeconds: used };
  },
  state: () => ({ connections, negotiated, mode }),
  memory: () => process.memoryUsage(),
  cpu,
  gc() {
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    gc?.();
    return { exposed: gc !== undefined };
  },
  stop() {
    if (listenSocket) uWS.us_listen_socket_close(listenSocket);
    setImmediate(() => process.exit(0));
  },
};
export type CompressServerApi = typeof api;

app.listen('127.0.0.1', 0, (token) => {
  if (!token) {
    console.error('cannot listen');
    process.exit(1);
  }
  listenSocket = token;
  serve(api);
  notify('ready', { port: uWS.us_socket_local_port(token), pid: process.pid });
});
