// uWS bug uNetworking/uWebSockets#1928 on the build src/hub/uws.ts loads: an upgrade completed
// after an await, inside res.cork(), makes cork() read freed memory and close the new socket when
// that memory was reused. open() here reuses it on purpose (small buffers filled with 0x10, the
// "connection: close" bit of the HTTP state cork() misreads), which makes the bug show every time.
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { uWS, upgradeAfterAwait } from '../src/hub/uws.ts';

type Strategy = 'cork' | 'upgradeAfterAwait';
const CONNECTIONS = 40;
const apps: Array<() => void> = [];
afterEach(() => {
  for (const stop of apps.splice(0)) stop();
});

/** A bare app whose upgrades finish after a timer; resolves its port. */
async function startApp(strategy: Strategy): Promise<{ port: number; open: Set<uWS.WebSocket<unknown>> }> {
  const open = new Set<uWS.WebSocket<unknown>>();
  const app = uWS.App().ws<unknown>('/*', {
    upgrade: (res, req, context) => {
      const key = req.getHeader('sec-websocket-key');
      const protocol = req.getHeader('sec-websocket-protocol');
      const extensions = req.getHeader('sec-websocket-extensions');
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      setTimeout(() => {
        if (aborted) return;
        const upgrade = () => res.upgrade({}, key, protocol, extensions, context);
        if (strategy === 'cork') res.cork(upgrade);
        else upgradeAfterAwait(res, upgrade, open.values().next().value);
      }, 1);
    },
    open: (ws) => {
      open.add(ws);
      const reuse: Buffer[] = [];
      for (let n = 16; n <= 1024; n += 8) reuse.push(Buffer.allocUnsafeSlow(n).fill(0x10));
      setImmediate(() => {
        if (open.has(ws)) ws.send('hello');
        reuse.length = 0;
      });
    },
    close: (ws) => {
      open.delete(ws);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    app.listen('127.0.0.1', 0, (token) => {
      if (!token) return reject(new Error('cannot listen'));
      apps.push(() => uWS.us_listen_socket_close(token));
      resolve(uWS.us_socket_local_port(token));
    }),
  );
  return { port, open };
}

/** Opens a socket; 'open' when it got its first frame and is still open 20 ms later. */
async function probe(port: number): Promise<{ result: 'open' | 'closed'; ws: WebSocket }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  ws.on('error', () => undefined);
  const result = await new Promise<'open' | 'closed'>((resolve) => {
    ws.on('close', () => resolve('closed'));
    ws.on('message', () => setTimeout(() => resolve(ws.readyState === WebSocket.OPEN ? 'open' : 'closed'), 20));
  });
  return { result, ws };
}

async function closedOf(port: number, connections = CONNECTIONS): Promise<number> {
  let closed = 0;
  for (let i = 0; i < connections; i++) {
    const { result, ws } = await probe(port);
    if (result === 'closed') closed++;
    ws.terminate();
  }
  return closed;
}

describe('upgrade after an await (uWS#1928)', () => {
  it('the bug is real on this build: plain res.cork() closes fresh sockets', async () => {
    // If this ever fails, the build has the upstream fix (PR #1929) and upgradeAfterAwait can go.
    const { port } = await startApp('cork');
    expect(await closedOf(port)).toBeGreaterThan(0);
  });

  it('upgradeAfterAwait keeps every socket open while another one is open', async () => {
    const { port, open } = await startApp('upgradeAfterAwait');
    const anchor = await probe(port); // the first upgrade has no other socket to cork on
    expect(anchor.result).toBe('open');
    expect(open.size).toBe(1);
    expect(await closedOf(port)).toBe(0);
    anchor.ws.terminate();
  });

  it('upgradeAfterAwait keeps every socket open when none other is open', async () => {
    // Uncorked upgrades: uWS.js prints a warning for each, so fewer of them.
    const { port } = await startApp('upgradeAfterAwait');
    expect(await closedOf(port, 10)).toBe(0);
  });
});
