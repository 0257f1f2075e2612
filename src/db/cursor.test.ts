import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareCursors } from '../../client/index.ts';
import { type Position, ZERO, compare, decodeCursor, encodeCursor } from './cursor.ts';

// The server orders positions (src/db/cursor.ts); the SDK orders the cursor strings it gets
// (client/index.ts `compareCursors`, no BigInt). Both must give one and the same order.

const U64 = 2n ** 64n - 1n;
const position = fc.record({ txid: fc.bigInt({ min: 0n, max: U64 }), id: fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }) });
/** Any text of the cursor grammar: 1-13 base-36 digits each side, leading zeros included. */
const digits = fc.string({ unit: fc.constantFrom(...'0123456789abcdefghijklmnopqrstuvwxyz'), minLength: 1, maxLength: 13 });
const zeroPadded = fc.tuple(fc.integer({ min: 0, max: 12 }), digits).map(([z, d]) => ('0'.repeat(z) + d).slice(-13));
const cursorText = fc.oneof(
  position.map(encodeCursor),
  fc.tuple(fc.oneof(digits, zeroPadded), fc.oneof(digits, zeroPadded)).map(([a, b]) => `${a}.${b}`),
);

describe('cursor codec', () => {
  it('encode/decode round-trips every 64-bit position, and the encoding is canonical', () => {
    fc.assert(
      fc.property(position, (p) => {
        const text = encodeCursor(p);
        expect(decodeCursor(text)).toEqual(p);
        expect(text).toMatch(/^(0|[1-9a-z][0-9a-z]*)\.(0|[1-9a-z][0-9a-z]*)$/);
      }),
      { numRuns: 2000 },
    );
    expect(encodeCursor(ZERO)).toBe('0.0');
    expect(encodeCursor({ txid: U64, id: 0n })).toBe('3w5e11264sgsf.0');
  });

  it('decoding any text of the grammar and encoding again gives its canonical spelling, at the same position', () => {
    fc.assert(
      fc.property(cursorText, (text) => {
        const p = decodeCursor(text) as Position;
        expect(p).toBeDefined();
        const again = encodeCursor(p);
        expect(again).toBe(text.replace(/(^|\.)0+(?=[0-9a-z])/g, '$1'));
        expect(decodeCursor(again)).toEqual(p);
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses what is not a cursor', () => {
    for (const bad of ['', '.', '1', '1.', '.1', '1.2.3', '1,2', ' 1.2', '1.2 ', 'A.1', '-1.2', '1.+2', '00000000000000.1', 'é.1', `${'1'.repeat(41)}`]) {
      expect(decodeCursor(bad), bad).toBeUndefined();
    }
    for (const bad of [undefined, null, 12, { txid: 1 }, ['1.2']]) expect(decodeCursor(bad)).toBeUndefined();
  });
});

describe('one order: server and SDK', () => {
  it('(property) compare on decoded cursors and compareCursors agree on every pair of cursors', () => {
    fc.assert(
      fc.property(cursorText, cursorText, (a, b) => {
        const x = decodeCursor(a) as Position;
        const y = decodeCursor(b) as Position;
        expect(compareCursors(a, b)).toBe(Math.sign(compare(x, y)));
        expect(compareCursors(b, a)).toBe(-compareCursors(a, b) || 0);
      }),
      { numRuns: 5000 },
    );
  });

  it('(property) and on every pair of positions, including neighbours a double cannot tell apart', () => {
    const near = fc.tuple(position, fc.constantFrom(-1n, 0n, 1n), fc.constantFrom(-1n, 0n, 1n)).map(([p, dt, di]) => [
      p,
      { txid: p.txid + dt < 0n || p.txid + dt > U64 ? p.txid : p.txid + dt, id: p.id + di < 0n ? p.id : p.id + di },
    ] as const);
    fc.assert(
      fc.property(near, ([a, b]) => {
        expect(compareCursors(encodeCursor(a), encodeCursor(b))).toBe(Math.sign(compare(a, b)));
      }),
      { numRuns: 2000 },
    );
    const big = 2n ** 60n;
    expect(compareCursors(encodeCursor({ txid: big, id: 0n }), encodeCursor({ txid: big + 1n, id: 0n }))).toBe(-1);
  });

  it('compareCursors: examples (numeric, not text order; leading zeros and case do not count)', () => {
    expect(compareCursors('1.0', '1.0')).toBe(0);
    expect(compareCursors('1.0', '1.1')).toBe(-1);
    expect(compareCursors('1.z', '2.0')).toBe(-1);
    expect(compareCursors('z.0', '10.0')).toBe(-1); // 35 < 36
    expect(compareCursors('9.0', 'a.0')).toBe(-1); // 9 < 10
    expect(compareCursors('2.10', '2.9')).toBe(1);
    expect(compareCursors('00a.1', 'a.01')).toBe(0);
    expect(compareCursors('zzzzzzzzzzzzz.1', '1000000000000.0')).toBe(1);
    expect(compareCursors('A.1', 'a.1')).toBe(0);
    expect(() => compareCursors('1.0', 'nope')).toThrow(TypeError);
    expect(() => compareCursors('', '1.0')).toThrow(TypeError);
  });
});
