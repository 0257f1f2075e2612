/*
 * Peer: the same hub written with socket.io and its Redis adapter, as socket.io's docs show
 * (auth middleware on `socket.handshake.auth`, a room per election, `io.to(room).emit`,
 * `createAdapter(pubClient, subClient)` with ioredis), fed by LISTEN on the same outbox.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import { jwtVerify, type JWTPayload } from 'jose';
import pg from 'pg';
import { Server } from 'socket.io';
import { notify, serve } from '../lib/rpc.ts';

type Claims = JWTPayload & { elections?: number[] };

const secret = new TextEncoder().encode(process.env.JWT_SECRET ?? '');
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
const pubClient = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const subClient = pubClient.duplicate();
const httpServer = createServer();
// A key of its own: other processes may share this Redis.
const io = new Server(httpServer, { adapter: createAdapter(pubClient, subClient, { key: `bench-${randomBytes(4).toString('hex')}` }) });

io.use((socket, next) => {
  const token = String((socket.handshake.auth as { token?: unknown }).token ?? '');
  jwtVerify<Claims>(token, secret, { algorithms: ['HS256'] }).then(
    ({ payload }) => {
      socket.data.claims = payload;
      next();
    },
    () => next(new Error('unauthorized')),
  );
});

io.on('connection', (socket) => {
  const claims = socket.data.claims as Claims;
  for (const e of claims.elections ?? []) void socket.join(`election:${e}`);
});

const TYPES: Record<string, string> = { guarantee: 'guarantee_update', attendance: 'attendance_update', vote: 'voting_update' };
type Row = { id: string; kind: string; action: string; election_id: number; committee_id: number; row_id: unknown; data: unknown; committed_at: Date };

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
        const type = TYPES[row.kind] ?? row.kind;
        io.to(`election:${row.election_id}`).emit(type, {
          type,
          action: row.action,
          election_id: row.election_id,
          committee_id: row.committee_id,
          id: row.row_id,
          data: row.data,
          cursor: row.id,
          committed_at: row.committed_at,
        });
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

httpServer.listen(0, '127.0.0.1', () => {
  serve({
    async stop() {
      io.disconnectSockets(true);
      await new Promise<void>((r) => io.close(() => r()));
      await listener.end();
      await pool.end();
      pubClient.disconnect();
      subClient.disconnect();
      setImmediate(() => process.exit(0));
    },
  });
  notify('ready', { port: (httpServer.address() as AddressInfo).port, pid: process.pid });
});
