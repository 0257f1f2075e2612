import type { Logger } from '../log.ts';
import type { Position } from '../events/position.ts';
import { errorMessage } from '../errors.ts';

/**
 * Facts one hub reports as they happen (graphile/worker's `events`): for operators' hooks and
 * for tests, which wait on them instead of sleeping. Each is emitted after the fact it names.
 */
export type LifecycleEvents = {
  /** The reader took its first position: the outbox horizon when it started. */
  'reader:started': { readonly position: Position };
  /**
   * A read of the outbox finished (whether or not it found rows). Everything at or before
   * `position` has been published; `held`: committed rows wait behind an older transaction
   * that is still open.
   */
  'reader:read': { readonly position: Position; readonly held: boolean };
  /** Keys a restart of PostgreSQL took back held the reader: it starts again at `position` (sql/012). */
  'reader:restarted': { readonly position: Position };
  /** Housekeeping ran and learned how far pruning has reached (by this node or another). */
  pruned: { readonly mark: Position };
  /** The listener's connection is up and LISTENs (again). */
  'listener:up': Record<string, never>;
  /** The listener's connection was lost; it reconnects by itself. */
  'listener:down': Record<string, never>;
};

export type LifecycleEvent = keyof LifecycleEvents;

/** The read side handed out on the Hub handle. */
export type Lifecycle = {
  /** Calls `fn` for every `event` from now on; returns the function that stops it. */
  on<K extends LifecycleEvent>(event: K, fn: (e: LifecycleEvents[K]) => void): () => void;
};

export type LifecycleEmitter = Lifecycle & {
  /** Synchronous; a handler that throws is logged and does not disturb the caller or other handlers. */
  emit<K extends LifecycleEvent>(event: K, e: LifecycleEvents[K]): void;
};

export function createLifecycle(log: Logger): LifecycleEmitter {
  const handlers = new Map<LifecycleEvent, Set<(e: never) => void>>();
  return {
    on(event, fn) {
      let set = handlers.get(event);
      if (!set) handlers.set(event, (set = new Set()));
      set.add(fn);
      return () => void set.delete(fn);
    },
    emit(event, e) {
      const set = handlers.get(event);
      if (!set) return;
      for (const fn of [...set]) {
        try {
          (fn as (e: LifecycleEvents[typeof event]) => void)(e);
        } catch (err) {
          log.warn({ event, err: errorMessage(err) }, 'lifecycle event handler failed');
        }
      }
    },
  };
}
