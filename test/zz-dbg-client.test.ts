import { it } from 'vitest';
import net from 'node:net';
import uWS from 'uWebSockets.js';
import { createTestDatabase, seed } from './support/db.ts';
import { startTestHub, token } from './support/hub.ts';

const origApp = uWS.App;
(uWS as any).App = (...a: any[]) => {
  const app = (origApp as any)(...a);
  const origWs = app.ws.bind(app);
  app.ws = (pattern: string, beh: any) => {
    const wrap = (name: string) => {
      const f = beh[name];
      if (!f) return;
      beh[name] = (ws: any, ...rest: any[]) => {
        const patch = (m: string) => { const o = ws[m]; if (o && !o.__p) { ws[m] = (...x: any[]) => { console.log('DBG call', m, x, new Error().stack?.split('\n').slice(2, 6).join(' | ')); return o.apply(ws, x); }; ws[m].__p = 1; } };
        try { patch('close'); patch('end'); } catch (e) { console.log('DBG patch fail', e); }
        if (name === 'close') console.log('DBG close handler', rest[0]); if (0) console.log( Buffer.from(rest[1] ?? new ArrayBuffer(0)).toString(), 'inOpen=', (globalThis as any).__inOpen, Date.now() - ((globalThis as any).__openAt ?? 0), new Error().stack?.split('\n').slice(1, 8).join(' | '));
        if (name === 'open') { (globalThis as any).__inOpen = true; (globalThis as any).__openAt = Date.now(); }
        try { return f(ws, ...rest); } catch (e) { console.log('DBG threw in', name, e); throw e; } finally { if (name === 'open') (globalThis as any).__inOpen = false; }
      };
    };
    for (const n of ['open', 'message', 'close', 'drain']) wrap(n);
    return origWs(pattern, beh);
  };
  return app;
};

it('dbg raw', async () => {
  const db = await createTestDatabase('dbg');
  await seed(db.pool, 1, 2);
  const hub = await startTestHub(db.url, { LOG_LEVEL: process.env.LL ?? 'info' });
  for (const sub of ['viewer-exp', 'viewe', 'view', 'qqqqqq', 'abcdefghij']) {
    const jwt = await token({ sub, ttl: '1h' });
    const sock = net.connect(hub.port, '127.0.0.1');
    await new Promise((r) => sock.on('connect', r));
    sock.write(`GET /ws?subscribe=none&token=${jwt} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    const r = await new Promise((res) => { sock.on('close', () => res('closed')); setTimeout(() => res('open'), 500); });
    console.log('DBG', sub, r);
    sock.destroy();
  }
  await hub.stop();
  await db.drop();
});
