import { errorMessage } from '../errors.ts';

/**
 * One step of a shutdown. `signal` aborts when the step has taken its whole time: a step that
 * waits for something (sockets to close) can stop waiting then.
 */
export type Release = (signal: AbortSignal) => Promise<void> | void;

/** A shutdown step that threw, rejected or did not finish in time (its `cause` says why). */
export class ShutdownStepError extends Error {
  override readonly name = 'ShutdownStepError';
  constructor(
    readonly step: string,
    message: string,
    options?: { cause: unknown },
  ) {
    super(message, options);
  }
}

export type Releasers = {
  /** Adds a step; steps run last added first. */
  push(name: string, release: Release): void;
  /**
   * Runs every step, last added first, one at a time, each for at most `timeoutMs`. A step that
   * fails or hangs past it is reported and the rest still run; then it rejects with an
   * AggregateError of ShutdownStepErrors, one per such step. Every call returns the same promise.
   */
  release(): Promise<void>;
};

/**
 * Last-in-first-out shutdown steps with a hard bound per step (graphile-worker's releasers,
 * with failures collected instead of only the first kept): a start-up pushes one step per
 * resource it acquires, so a stop, or a start that failed halfway, releases exactly those, in
 * reverse order. A step abandoned at its timeout keeps running in the background; what it
 * does later is no longer waited for or reported.
 */
export function createReleasers(opts: {
  /** Each step's bound (SHUTDOWN_TIMEOUT for the hub). */
  timeoutMs: number;
  /** After each step: no error when it finished cleanly. */
  onStep?: (step: string, error: ShutdownStepError | undefined) => void;
}): Releasers {
  const steps: Array<[string, Release]> = [];
  let releasing: Promise<void> | undefined;

  const run = async (name: string, release: Release): Promise<ShutdownStepError | undefined> => {
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), opts.timeoutMs);
    });
    // A step that throws synchronously fails like one that rejects.
    const done = Promise.resolve().then(() => release(abort.signal));
    try {
      const outcome = await Promise.race([done.then(() => 'done' as const), timedOut]);
      if (outcome === 'done') return undefined;
      // Abandoned (a later rejection lands in the race, already settled): tell it to give up.
      abort.abort();
      return new ShutdownStepError(name, `shutdown step "${name}" did not finish within ${opts.timeoutMs} ms`);
    } catch (err) {
      return new ShutdownStepError(name, `shutdown step "${name}" failed: ${errorMessage(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  };

  const releaseAll = async () => {
    const failures: ShutdownStepError[] = [];
    const total = steps.length;
    for (const [name, release] of steps.splice(0).reverse()) {
      const failure = await run(name, release);
      if (failure) failures.push(failure);
      opts.onStep?.(name, failure);
    }
    if (failures.length > 0) {
      throw new AggregateError(
        failures,
        `${failures.length} of ${total} shutdown steps failed: ${failures.map((f) => f.step).join(', ')}`,
      );
    }
  };

  return {
    push(name, release) {
      steps.push([name, release]);
    },
    release: () => (releasing ??= releaseAll()),
  };
}
