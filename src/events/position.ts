/**
 * A position in the outbox's one global order: (transaction id, row id). `id = 0` means
 * "after every row of transactions below `txid`" (what a snapshot or an idle reader holds).
 * Clients see cursors as opaque strings.
 */
export type Position = { readonly txid: bigint; readonly id: bigint };

export const ZERO: Position = { txid: 0n, id: 0n };

export function compare(a: Position, b: Position): number {
  if (a.txid !== b.txid) return a.txid < b.txid ? -1 : 1;
  if (a.id !== b.id) return a.id < b.id ? -1 : 1;
  return 0;
}

export function encodeCursor(p: Position): string {
  return `${p.txid.toString(36)}.${p.id.toString(36)}`;
}

/** The largest txid (xid8) and outbox id (bigint): 13 base-36 digits reach beyond both. */
const MAX_TXID = 2n ** 64n - 1n;
const MAX_ID = 2n ** 63n - 1n;

/**
 * Parses a client's cursor; undefined when it is not one of ours, including a position no
 * outbox row can have (PostgreSQL would refuse it in a replay's query).
 */
export function decodeCursor(text: unknown): Position | undefined {
  if (typeof text !== 'string' || text.length > 40) return undefined;
  const m = /^([0-9a-z]{1,13})\.([0-9a-z]{1,13})$/.exec(text);
  if (!m || !m[1] || !m[2]) return undefined;
  const parse = (s: string) => [...s].reduce((acc, ch) => acc * 36n + BigInt(parseInt(ch, 36)), 0n);
  const p = { txid: parse(m[1]), id: parse(m[2]) };
  return p.txid > MAX_TXID || p.id > MAX_ID ? undefined : p;
}
