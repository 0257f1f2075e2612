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
import { eventOf, pollOutbox } from './outbox-poll.ts';

type Claims = JWTPayload & { elections?: number[] };

const secret = new TextEncoder().encode(process.env.JWT_SECRET ?? '');
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
const pubClient = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const subClient = pubClient.duplicate();
const httpServer = createServer();
// A key of its own: other processes may share this Redis.
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient, { key: `bench-${randomBytes(4).toString('hex')}` }),
});

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

const listener = await pollOutbox(pool, process.env.DATABASE_URL, (row) => {
  const event = eventOf(row);
  io.to(`election:${row.election_id}`).emit(event.type, event);
});

httpServer.listen(0, '127.0.0.1', () => {
  serve({
    async stop() {
      io.disconnectSockets(true);
      await new Promise<void>((r) => {
        void io.close(() => r());
      });
      await listener.stop();
      await pool.end();
      pubClient.disconnect();
      subClient.disconnect();
      setImmediate(() => process.exit(0));
    },
  });
  notify('ready', { port: (httpServer.address() as AddressInfo).port, pid: process.pid });
});
