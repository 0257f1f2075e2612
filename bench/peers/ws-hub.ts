/*
 * Peer: the hub as most teams would first write it with `ws` — the authentication and
 * broadcast patterns from ws's README, LISTEN on the same outbox channel, read new outbox
 * rows, and for every client whose elections match, `ws.send(JSON.stringify(event))`.
 * Same database side (triggers, outbox, NOTIFY) as the hub; only the fan-out differs.
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jwtVerify, type JWTPayload } from 'jose';
import pg from 'pg';
import { WebSocket, WebSocketServer } from 'ws';
import { notify, serve } from '../lib/rpc.ts';
import { type Row, eventOf, pollOutbox } from './outbox-poll.ts';

const secret = new TextEncoder().encode(process.env.JWT_SECRET ?? '');
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
const server = createServer();
const wss = new WebSocketServer({ noServer: true });
const elections = new Map<WebSocket, Set<number>>();

type Claims = JWTPayload & { elections?: number[] };

server.on('upgrade', (request: IncomingMessage, socket, head) => {
  socket.on('error', () => socket.destroy());
  const token = new URL(request.url ?? '/', 'http://localhost').searchParams.get('token') ?? '';
  jwtVerify<Claims>(token, secret, { algorithms: ['HS256'] }).then(
    ({ payload }) => {
      wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request, payload));
    },
    () => {
      socket.write('HTTP/1.1 401 Unauthorized\r\n\r\n');
      socket.destroy();
    },
  );
});

wss.on('connection', (ws: WebSocket, _request: IncomingMessage, claims: Claims) => {
  elections.set(ws, new Set(claims.elections ?? []));
  ws.on('error', () => undefined);
  ws.on('close', () => elections.delete(ws));
  ws.send(JSON.stringify({ type: 'connection_success', sub: claims.sub }));
});

function broadcast(row: Row) {
  const event = eventOf(row);
  for (const [ws, subscribed] of elections) {
    if (ws.readyState === WebSocket.OPEN && subscribed.has(row.election_id)) ws.send(JSON.stringify(event));
  }
}

const listener = await pollOutbox(pool, process.env.DATABASE_URL, broadcast);

server.listen(0, '127.0.0.1', () => {
  serve({
    async stop() {
      for (const ws of wss.clients) ws.terminate();
      await listener.stop();
      await pool.end();
      server.close();
      setImmediate(() => process.exit(0));
    },
  });
  notify('ready', { port: (server.address() as AddressInfo).port, pid: process.pid });
});
