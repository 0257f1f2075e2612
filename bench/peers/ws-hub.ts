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

const TYPES: Record<string, string> = { guarantee: 'guarantee_update', attendance: 'attendance_update', vote: 'voting_update' };

type Row = { id: string; kind: string; action: string; election_id: number; committee_id: number; row_id: unknown; data: unknown; committed_at: Date };

function broadcast(row: Row) {
  const event = {
    type: TYPES[row.kind] ?? row.kind,
    action: row.action,
    election_id: row.election_id,
    committee_id: row.committee_id,
    id: row.row_id,
    data: row.data,
    cursor: row.id,
    committed_at: row.committed_at,
  };
  for (const [ws, subscribed] of elections) {
    if (ws.readyState === WebSocket.OPEN && subscribed.has(row.election_id)) ws.send(JSON.stringify(event));
  }
}

let lastId = '0';
let polling = false;
let again = false;
async function poll() {
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  try {
    do {
      again = false;
      const { rows } = await pool.query<Row>(
        `SELECT id::text, kind, action, election_id::int, committee_id::int, row_id, data, committed_at
         FROM hub.outbox WHERE id > $1 ORDER BY id LIMIT 1000`,
        [lastId],
      );
      for (const row of rows) {
        lastId = row.id;
        broadcast(row);
      }
      if (rows.length === 1000) again = true;
    } while (again);
  } catch (err) {
    console.error('poll failed', err);
  } finally {
    polling = false;
  }
}

const start = await pool.query<{ id: string }>('SELECT coalesce(max(id), 0)::text AS id FROM hub.outbox');
lastId = start.rows[0]?.id ?? '0';
const listener = new pg.Client({ connectionString: process.env.DATABASE_URL });
await listener.connect();
listener.on('notification', () => void poll());
await listener.query('LISTEN hub_outbox');

server.listen(0, '127.0.0.1', () => {
  serve({
    async stop() {
      for (const ws of wss.clients) ws.terminate();
      await listener.end();
      await pool.end();
      server.close();
      setImmediate(() => process.exit(0));
    },
  });
  notify('ready', { port: (server.address() as AddressInfo).port, pid: process.pid });
});
