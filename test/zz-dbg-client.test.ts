import { it } from 'vitest';
import { createTestDatabase, seed } from './support/db.ts';
import { connect, startTestHub, token, capturedLogs } from './support/hub.ts';

for (const mode of ['protocol', 'query', 'protocol2']) it('dbg ' + mode, async () => {
  const db = await createTestDatabase('dbg');
  const s = await seed(db.pool, 1, 2);
  const hub = await startTestHub(db.url);
  const jwt = await token({ sub: 'viewer-exp', elections: s.elections, ttl: '1h' });
  const c = await connect(hub, mode.startsWith('protocol') ? { protocols: [`bearer.${jwt}`], query: 'subscribe=none' } : { token: jwt, query: 'subscribe=none' });
  await c.next((f) => f.type === 'connection_success');
  c.send({ type: 'subscribe', topics: [`election:${s.elections[0]}`] });
  const r = await Promise.race([c.closed, c.next((f) => f.type === 'subscribed', 2000)]);
  console.log('DBG', mode, JSON.stringify(r), c.frames.map((f) => f.type));
  await c.close();
  await hub.stop();
  await db.drop();
});
