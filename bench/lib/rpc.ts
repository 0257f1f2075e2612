import type { ChildProcess } from 'node:child_process';

/*
 * A minimal request/response protocol over Node's IPC channel between the bench
 * orchestrator and its child processes (client workers, writer, servers). Each child
 * declares its API as an object of async functions; the parent calls them by name.
 */

// `any` only in the constraint: each API keeps its own parameter types.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- see above: a constraint, never a value's type
export type Api = Record<string, (args: any) => unknown>;

type Request = { rpc: number; cmd: string; args: unknown };
type Reply = { rpc: number; ok: true; result: unknown } | { rpc: number; ok: false; error: string };
type Notice = { notice: string; data: unknown };

const isRequest = (m: unknown): m is Request => typeof m === 'object' && m !== null && 'rpc' in m && 'cmd' in m;
const isReply = (m: unknown): m is Reply => typeof m === 'object' && m !== null && 'rpc' in m && 'ok' in m;
const isNotice = (m: unknown): m is Notice => typeof m === 'object' && m !== null && 'notice' in m;

/** Child side: answers the parent's calls; exits when the parent goes away. */
export function serve(api: Api, onParentGone: () => void = () => process.exit(0)): void {
  const send = process.send?.bind(process);
  if (!send) throw new Error('not started with an IPC channel');
  process.on('message', (m: unknown) => {
    if (!isRequest(m)) return;
    const fn = api[m.cmd];
    Promise.resolve()
      .then(() => {
        if (!fn) throw new Error(`unknown command ${m.cmd}`);
        return fn(m.args);
      })
      .then(
        (result) => send({ rpc: m.rpc, ok: true, result: result ?? null }),
        (err: unknown) =>
          send({ rpc: m.rpc, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
      );
  });
  process.on('disconnect', onParentGone);
}

/** Child side: tells the parent something happened (e.g. `ready` with the port). */
export function notify(notice: string, data: unknown = null): void {
  process.send?.({ notice, data });
}

/** Parent side: a typed handle on one child process. */
export class Child<A extends Api> {
  private next = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  private readonly notices = new Map<string, unknown[]>();
  private readonly waiters = new Map<string, Array<(data: unknown) => void>>();
  readonly exited: Promise<number | null>;
  private exitCode: number | null | undefined;

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    readonly logFile: string,
  ) {
    proc.on('message', (m: unknown) => {
      if (isReply(m)) {
        const p = this.pending.get(m.rpc);
        if (!p) return;
        this.pending.delete(m.rpc);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.result);
        else p.reject(new Error(`${name}: ${m.error}`));
      } else if (isNotice(m)) {
        const ws = this.waiters.get(m.notice);
        if (ws && ws.length > 0) ws.shift()?.(m.data);
        else this.notices.set(m.notice, [...(this.notices.get(m.notice) ?? []), m.data]);
      }
    });
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(new Error(`${name} exited (${code ?? signal}) during a call; see ${logFile}`));
        }
        this.pending.clear();
        resolve(code);
      });
    });
  }

  get alive(): boolean {
    return this.exitCode === undefined;
  }

  call<K extends keyof A & string>(
    cmd: K,
    args: Parameters<A[K]>[0],
    timeoutMs = 900_000,
  ): Promise<Awaited<ReturnType<A[K]>>> {
    if (!this.alive) return Promise.reject(new Error(`${this.name} is not running; see ${this.logFile}`));
    const rpc = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rpc);
        reject(new Error(`${this.name}: ${cmd} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(rpc, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.proc.send({ rpc, cmd, args } satisfies Request);
    });
  }

  /** Resolves with the data of the next `notice` (or one already received). */
  notice(name: string, timeoutMs: number): Promise<unknown> {
    const queued = this.notices.get(name);
    if (queued && queued.length > 0) return Promise.resolve(queued.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${this.name}: no ${name} within ${timeoutMs} ms; see ${this.logFile}`)),
        timeoutMs,
      );
      const done = (data: unknown) => {
        clearTimeout(timer);
        resolve(data);
      };
      this.waiters.set(name, [...(this.waiters.get(name) ?? []), done]);
      void this.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${code}) before ${name}; see ${this.logFile}`));
      });
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async kill(graceMs = 3000): Promise<void> {
    if (!this.alive) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}
