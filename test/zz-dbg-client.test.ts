import { it } from 'vitest';
import net from 'node:net';
import { createTestDatabase, seed } from './support/db.ts';
import { startTestHub, token } from './support/hub.ts';

it('dbg raw', async () => {
  const db = await createTestDatabase('dbg');
  const s = await seed(db.pool, 1, 2);
  const hub = await startTestHub(db.url);
  for (const [sub, extra, q] of [['viewer-exp', {}, 'subscribe=none'], ['viewer-exp', { role: 'x' }, 'subscribe=none'], ['viewer-exp', {}, 'subscribe=nonf'], ['viewer-exp', {}, 'a=b'], ['viewer-exp', {}, 'subscribe=none&x=1'], ['abcdefghij', {}, 'subscribe=none']] as const) {
    const jwt = await token({ sub, ttl: '1h', ...extra });
    const sock = net.connect(hub.port, '127.0.0.1');
    const chunks: Buffer[] = [];
    sock.on('data', (d) => chunks.push(d));
    await new Promise((r) => sock.on('connect', r));
    sock.write(`GET /ws?${q}&token=${jwt} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    const r = await new Promise((res) => { sock.on('close', () => res('closed')); setTimeout(() => res('open'), 500); });
    const all = Buffer.concat(chunks);
    console.log('DBG', sub, JSON.stringify(extra), q, r);
    sock.destroy();
  }
  await hub.stop();
  await db.drop();
});
