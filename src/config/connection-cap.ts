import { readFileSync } from 'node:fs';

/**
 * Sockets this node accepts: MAX_CONNECTIONS, else the open-file limit less headroom for the
 * database, Redis and the listen socket. At the fd limit uWS cannot accept and spins; refusing
 * with 503 lets the load balancer send the client to another node.
 */
export function connectionCap(configured: number | undefined): number {
  if (configured !== undefined) return configured;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m?.[1]) return Math.max(100, Number(m[1]) - 256);
  } catch {
    // Not Linux: no known limit to stay under.
  }
  return Number.MAX_SAFE_INTEGER;
}
