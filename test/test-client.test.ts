// The test client (test/support/hub.ts) must wait on facts like a real client: a socket dropped
// right after its upgrade (uWS#1928: 1006, no frame) is opened again, and a wait for a frame
// on a socket that has closed fails at once, saying so, instead of running out its time.
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connect, droppedUpgrades } from './support/hub.ts';

let server: WebSocketServer;
let port: number;
let dropNext = 0;
let connections = 0;

beforeAll(async () => {
  server = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => server.once('listening', r));
  port = (server.address() as AddressInfo).port;
  server.on('connection', (ws, req) => {
    connections++;
    // What uWS does to an unlucky socket: the upgrade succeeded, then the TCP connection goes.
    if (dropNext > 0) {
      dropNext--;
      return ws.terminate();
    }
    ws.send(JSON.stringify({ type: 'connection_success', sub: 'x', topics: [], cursor: '1.0' }));
    if (req.url?.includes('close=4001')) ws.close(4001, 'token expired');
  });
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

it('a socket dropped right after the upgrade is opened again, as a real client would', async () => {
  dropNext = 2;
  const before = { connections, dropped: droppedUpgrades.count };
  const c = await connect({ port });
  expect(c.frames[0]?.type).toBe('connection_success');
  expect(connections - before.connections).toBe(3);
  expect(droppedUpgrades.count - before.dropped).toBe(2);
  await c.close();
});

it('waiting for a frame on a socket that closed fails at once with the close code', async () => {
  const c = await connect({ port }, { query: 'close=4001' });
  await expect(c.next((f) => f.type === 'subscribed', 60_000)).rejects.toThrow(
    /socket closed with 4001 \(token expired\); 1 frames/,
  );
  expect((await c.closed).code).toBe(4001);
}, 20_000);
