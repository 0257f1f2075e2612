import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { StaticFiles } from '../hub/server.ts';

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

/** Serves the dashboard page built into web/dist (read once per request path, then kept). */
export function staticFilesFrom(dir = fileURLToPath(new URL('../../web/dist/', import.meta.url))): StaticFiles {
  const cache = new Map<string, { body: Buffer; contentType: string }>();
  return (path) => {
    const name = path === '/' ? 'index.html' : path.slice(1);
    const hit = cache.get(name);
    if (hit) return hit;
    const file = dir + name;
    if (!/^[a-z0-9._-]+$/i.test(name) || !existsSync(file)) return undefined;
    const ext = name.slice(name.lastIndexOf('.'));
    const entry = { body: readFileSync(file), contentType: TYPES[ext] ?? 'application/octet-stream' };
    cache.set(name, entry);
    return entry;
  };
}
