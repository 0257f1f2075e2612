/**
 * A position in the outbox's one global order: (commit key, row id) (sql/006_commit_order.sql).
 * `id = 0` means "before every row of key `seq`, after every row of smaller keys" (what a
 * snapshot or an idle reader holds). Clients see cursors as opaque strings.
 *
 * Keys start at FIRST_SEQ (2^62). A position below it is in the order that came before the
 * commit keys, (txid, id): rows already in the outbox at the migration kept their txid as their
 * key, so such a cursor still names the same place (see `legacy_limit` for the ones that can't).
 */
export type Position = { readonly seq: bigint; readonly id: bigint };

export const ZERO: Position = { seq: 0n, id: 0n };

/** The first commit key (sql/006_commit_order.sql); smaller ones are the old rows' txids. */
export const FIRST_SEQ = 2n ** 62n;

const MAX_BIGINT = 2n ** 63n - 1n;

export function compare(a: Position, b: Position): number {
  if (a.seq !== b.seq) return a.seq < b.seq ? -1 : 1;
  if (a.id !== b.id) return a.id < b.id ? -1 : 1;
  return 0;
}

export function encodeCursor(p: Position): string {
  return `${p.seq.toString(36)}.${p.id.toString(36)}`;
}

/**
 * Parses a client's cursor; undefined when it is not one of ours, including a position no
 * outbox row can have (PostgreSQL would refuse it in a replay's query).
 */
export function decodeCursor(text: unknown): Position | undefined {
  if (typeof text !== 'string' || text.length > 40) return undefined;
  const m = /^([0-9a-z]{1,13})\.([0-9a-z]{1,13})$/.exec(text);
  if (!m || !m[1] || !m[2]) return undefined;
  const parse = (s: string) => [...s].reduce((acc, ch) => acc * 36n + BigInt(parseInt(ch, 36)), 0n);
  const seq = parse(m[1]);
  const id = parse(m[2]);
  if (seq > MAX_BIGINT || id > MAX_BIGINT) return undefined;
  return { seq, id };
}

/**
 * Keys a crash took back after they may have been handed out: [from, to), to being the first
 * key of the epoch the sequencer opened after the restart (sql/012_async_keys_and_restarts.sql).
 */
export type LostRange = { readonly from: bigint; readonly to: bigint };

/** Keys come in epochs of 2^32 from FIRST_SEQ; a new epoch's frontier says a lost range may be new. */
export const epochOf = (seq: bigint): bigint => (seq < FIRST_SEQ ? -1n : (seq - FIRST_SEQ) >> 32n);

/**
 * The lost range `p` stands in, if any: {from, 0} < p < {to, 0}. Such a position counts events
 * that no longer exist under their keys; one at or below {from, 0} or at or above {to, 0} keeps
 * its meaning.
 */
export function lostRangeOf(p: Position, lost: readonly LostRange[]): LostRange | undefined {
  for (const r of lost) if (compare(p, { seq: r.from, id: 0n }) > 0 && p.seq < r.to) return r;
  return undefined;
}
