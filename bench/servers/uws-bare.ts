/*
 * The engine limit: a bare uWebSockets.js server (the hub's own package and socket
 * settings) with every client subscribed to one topic. On request it publishes frames of a
 * given size in batches per event-loop turn, as the hub's reader publishes pages of the
 * outbox. No authentication, no database, no JSON per send.
 */
import { uWS } from '../../src/hub/uws.ts';
import { wallNow } from '../lib/clock.ts';
import { notify, serve } from '../lib/rpc.ts';

const TOPIC = 'election:1';
let connections = 0;
let listenSocket: uWS.us_listen_socket | undefined;

const app = uWS
  .App()
  .ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 1024 * 1024,
    idleTimeout: 120,
    sendPingsAutomatically: true,
    maxBackpressure: 64 * 1024 * 1024,
    open: (ws) => {
      connections++;
      ws.subscribe(TOPIC);
      ws.send('{"type":"connection_success"}', false);
    },
    close: () => {
      connections--;
    },
  })
  .get('/metrics', (res) => {
    res.end(`# bare uWS\nprocess_resident_memory_bytes ${process.memoryUsage.rss()}\nconnections ${connections}\n`);
  });

/** A frame shaped like the hub's (a guarantee row event), padded to `size` bytes, carrying its send time. */
const frameOf = (id: number, size: number) => {
  const head =
    `{"type":"guarantee_update","action":"created","election_id":1,"committee_id":1,"id":${id},` +
    `"data":{"id":${id},"status":"pledged","voter_name":"T${wallNow().toFixed(3)}","election_id":1,"committee_id":1},` +
    `"cursor":"bare.${id}","committed_at":"${new Date().toISOString()}","pad":"`;
  const tail = '"}';
  return head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail;
};

const api = {
  /** Publishes `count` frames, `batch` per event-loop turn; resolves when all are handed to uWS. */
  async publish(a: { count: number; size: number; batch: number }) {
    let id = 0;
    while (id < a.count) {
      const end = Math.min(a.count, id + a.batch);
      for (; id < end; id++) app.publish(TOPIC, frameOf(id + 1, a.size), false);
      await new Promise((r) => setImmediate(r));
    }
    return { published: id };
  },
  memory: () => process.memoryUsage(),
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
export type BareApi = typeof api;

app.listen('127.0.0.1', 0, (token) => {
  if (!token) {
    console.error('cannot listen');
    process.exit(1);
  }
  listenSocket = token;
  serve(api);
  notify('ready', { port: uWS.us_socket_local_port(token), pid: process.pid });
});
