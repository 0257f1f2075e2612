import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.ts';
import { errorMessage } from '../errors.ts';

export type MetricsServer = {
  /** The port it listens on (the real one when METRICS_PORT is 0). */
  readonly port: number;
  close(): Promise<void>;
};

/**
 * The Prometheus listener (`GET /metrics` on METRICS_HOST:METRICS_PORT), apart from the public
 * HTTP/WebSocket port: metrics name topics, node ids and load, and a scrape costs CPU, so they
 * are for the operators' network only (loopback by default). A scrape a few times a minute needs
 * none of uWebSockets.js; node:http keeps this listener independent of the WebSocket server, so
 * it keeps answering while that one drains.
 */
export function startMetricsServer(opts: {
  registry: Registry;
  host: string;
  port: number;
  log: Logger;
}): Promise<MetricsServer> {
  const { registry, log } = opts;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res
        .writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' })
        .end('method not allowed\n');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'Content-Type': registry.contentType, 'Cache-Control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (err: unknown) => {
        log.error({ err: errorMessage(err) }, 'metrics collection failed');
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('metrics collection failed\n');
      },
    );
  });
  // A scraper that never finishes its request must not hold a socket forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new Error(`cannot listen on ${opts.host}:${opts.port} for metrics: ${err.code ?? err.message}`, { cause: err }),
      ),
    );
    server.listen(opts.port, opts.host, () => {
      server.removeAllListeners('error');
      server.on('error', (err) => log.warn({ err: errorMessage(err) }, 'metrics listener error'));
      const port = (server.address() as AddressInfo).port;
      resolve({
        port,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            // Keep-alive connections from Prometheus would hold close() open until they idle out.
            server.closeAllConnections();
          }),
      });
    });
  });
}
