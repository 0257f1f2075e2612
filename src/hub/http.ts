import type { uWS } from './uws.ts';
import type { Logger } from '../log.ts';
import type { Routes, HttpReply } from '../http/routes.ts';
import { bearer } from '../http/routes.ts';
import { type StaticFiles, staticReply } from '../http/static.ts';
import { ErrorCode, type HttpErrorCode, errorMessage, httpError } from '../errors.ts';

// HTTP plumbing on uWebSockets.js: replies, upgrade refusals and the routes of the public port.

const STATUS: Record<number, string> = {
  200: '200 OK',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

/** Writes a reply in one corked step; JSON answers are never cached. */
const write = (res: uWS.HttpResponse, reply: HttpReply) => {
  res.cork(() => {
    res
      .writeStatus(STATUS[reply.status] ?? `${reply.status} Status`)
      .writeHeader('Content-Type', reply.contentType ?? 'application/json')
      .writeHeader('Cache-Control', 'no-store')
      .end(reply.body);
  });
};

/** An upgrade refused with an HTTP error body (`{"error":code,"reason":...}`, src/errors.ts). */
export const refuse = (res: uWS.HttpResponse, code: HttpErrorCode, reason?: string) => {
  const { status, body } = httpError(code, reason);
  res.cork(() => {
    res
      .writeStatus(STATUS[status] ?? `${status}`)
      .writeHeader('Content-Type', 'application/json')
      .end(body);
  });
};

/**
 * The HTTP routes of the public port (handlers: src/http/routes.ts, plain functions of their
 * inputs) and, when built, the dashboard page.
 */
export function serveHttp(
  app: uWS.TemplatedApp,
  deps: { routes: Routes; log: Logger; staticFiles?: StaticFiles | undefined },
): void {
  const { routes, log } = deps;
  /** Async handlers: headers are copied first; the response is written only if still open. */
  const get = (
    pattern: string,
    fn: (read: {
      header: (h: string) => string;
      param: (i: number) => string;
      query: (k: string) => string | undefined;
    }) => Promise<HttpReply> | HttpReply,
  ) => {
    app.get(pattern, (res, req) => {
      const headers = new Map<string, string>();
      req.forEach((k, v) => headers.set(k, v));
      const params = [req.getParameter(0) ?? '', req.getParameter(1) ?? ''];
      const query = new URLSearchParams(req.getQuery() ?? '');
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      Promise.resolve()
        .then(() =>
          fn({
            header: (h) => headers.get(h) ?? '',
            param: (i) => params[i] ?? '',
            query: (k) => query.get(k) ?? undefined,
          }),
        )
        .then(
          (reply) => {
            if (!aborted) write(res, reply);
          },
          (err: unknown) => {
            log.error({ err: errorMessage(err), path: pattern }, 'request failed');
            if (!aborted) write(res, httpError(ErrorCode.internal));
          },
        );
    });
  };

  const tokenOf = (r: { header: (h: string) => string; query: (k: string) => string | undefined }) =>
    bearer(r.header('authorization')) ?? r.query('token');

  get('/health', () => routes.health());
  get('/ready', () => routes.ready());
  // No /metrics here: it has its own listener (METRICS_PORT, src/metrics/server.ts); this port answers 404.
  get('/admin/health', (r) => routes.adminHealth(bearer(r.header('authorization'))));
  get('/dashboard/:id', (r) => routes.dashboard(r.param(0), tokenOf(r)));
  get('/*', () => httpError(ErrorCode.notFound));
  if (deps.staticFiles) {
    const files = deps.staticFiles;
    for (const path of ['/', '/app.js', '/app.css']) {
      app.get(path, (res, req) => {
        const f = files(path);
        const reply = f
          ? staticReply(f, {
              acceptEncoding: req.getHeader('accept-encoding'),
              ifNoneMatch: req.getHeader('if-none-match'),
              version: new URLSearchParams(req.getQuery() ?? '').get('v') ?? undefined,
            })
          : undefined;
        res.cork(() => {
          if (!reply) {
            res.writeStatus('404 Not Found').end('not built: run npm run build:web');
            return;
          }
          res.writeStatus(reply.status === 304 ? '304 Not Modified' : '200 OK');
          for (const [k, v] of reply.headers) res.writeHeader(k, v);
          if (reply.body) res.end(reply.body);
          else res.endWithoutBody();
        });
      });
    }
  }
}
