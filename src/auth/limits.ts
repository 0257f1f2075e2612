/** Open sockets per `sub`. The local limiter serves a single node. */
export type ConnectionLimiter = {
  acquire(sub: string): Promise<boolean>;
  release(sub: string): void;
  stop(): Promise<void>;
};

export function createLocalLimiter(max: number): ConnectionLimiter {
  const open = new Map<string, number>();
  return {
    async acquire(sub) {
      const n = open.get(sub) ?? 0;
      if (n >= max) return false;
      open.set(sub, n + 1);
      return true;
    },
    release(sub) {
      const n = (open.get(sub) ?? 1) - 1;
      if (n <= 0) open.delete(sub);
      else open.set(sub, n);
    },
    async stop() {
      open.clear();
    },
  };
}
