import WebSocket from 'ws';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './support/db.ts';
import { startTestHub, token } from './support/hub.ts';
import type { Hub } from '../src/main.ts';

let db: TestDatabase;
let hub: Hub;
beforeAll(async () => {
  db = await createTestDatabase('hub_upgrade');
  hub = await startTestHub(db.url);
});
afterAll(async () => {
  await hub?.stop();
  await db?.drop();
});

// Regression for uWS bug uNetworking/uWebSockets#1928: res.cork(() => res.upgrade()) after an
// await closed the new socket right after `open` (1006 on both sides) whenever open() sent a
// frame whose bytes set a flag cork() misreads; which subs failed depended on the frame length.
it('sockets accepted after the async upgrade stay open, whatever the sub', async () => {
  const results: Record<string, string> = {};
  for (const sub of ['viewer-exp', 'viewer', 'qqqqqq', 'abcdefghij', 'exp', 'a', 'observer-42', 'x'.repeat(40)]) {
    for (const query of ['?subscribe=none', '']) {
      const ws = new WebSocket(`ws://127.0.0.1:${hub.port}/ws${query}`, [
        `bearer.${await token({ sub, elections: [1] })}`,
      ]);
      ws.on('error', () => undefined);
      results[`${sub}${query}`] = await new Promise<string>((res) => {
        ws.on('close', (code) => res(`closed ${code}`));
        // Open means usable: after connection_success, a ping gets its pong (a socket the bug closed gets neither).
        ws.on('message', (m) => {
          if (String(m).includes('connection_success')) ws.send('{"type":"ping"}');
          if (String(m).includes('"pong"')) res('open');
        });
      });
      ws.terminate();
    }
  }
  expect(Object.entries(results).filter(([, r]) => r !== 'open')).toEqual([]);
});
