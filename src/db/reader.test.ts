import { describe, expect, it } from 'vitest';
import { FIRST_SEQ } from '../events/position.ts';
import { holeBefore } from './reader.ts';

// The reader delivers rows in key order up to the first missing key at or above the frontier it
// was given (`settled`): below it a missing key is settled (an aborted transaction's key from
// sql/006_commit_order.sql, or pruned); sql/009_sequencer.sql gives keys without holes.
// holeBefore(last, q, settled): the first key of the hole between the last key seen and row
// key q that blocks q, or undefined.
const K = FIRST_SEQ;

describe('holeBefore', () => {
  it('consecutive keys, and more rows of the same key, never block', () => {
    expect(holeBefore(K + 4n, K + 5n, 0n)).toBeUndefined();
    expect(holeBefore(K + 4n, K + 4n, 0n)).toBeUndefined();
    expect(holeBefore(K - 1n, K, 0n)).toBeUndefined();
  });

  it('a missing key blocks what follows it until it is settled (below the frontier)', () => {
    expect(holeBefore(K + 4n, K + 6n, 0n)).toBe(K + 5n);
    expect(holeBefore(K + 4n, K + 6n, K + 5n)).toBe(K + 5n); // the frontier is the hole itself: not settled
    expect(holeBefore(K + 4n, K + 6n, K + 6n)).toBeUndefined(); // aborted
    expect(holeBefore(K + 4n, K + 9n, K + 7n)).toBe(K + 7n); // 5 and 6 settled, 7 not
  });

  it('the old rows (keys below FIRST_SEQ are txids, all committed) have no holes; the first commit key can', () => {
    expect(holeBefore(1000n, 5000n, 0n)).toBeUndefined();
    expect(holeBefore(1000n, K, 0n)).toBeUndefined();
    expect(holeBefore(1000n, K + 1n, 0n)).toBe(K);
    expect(holeBefore(1000n, K + 1n, K + 1n)).toBeUndefined();
  });
});
