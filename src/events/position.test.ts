import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareCursors } from '../../client/index.ts';
import { type Position, ZERO, compare, decodeCursor, encodeCursor } from './position.ts';

// The server orders positions (src/events/position.ts); the SDK orders the cursor strings it gets
// (client/index.ts `compareCursors`, no BigInt). Both must give one and the same order.

const I64 = 2n ** 63n - 1n; // bigint: commit keys and row ids (sql/006_commit_order.sql)
const position = fc.record({ seq: fc.bigInt({ min: 0n, max: I64 }), id: fc.bigInt({ min: 0n, max: I64 }) });
/** 1-13 base-36 digits, every length as likely, leading zeros included. */
const digits = fc
  .tuple(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 1, max: 13 }))
  .chain(([zeros, n]) =>
    fc
      .string({ unit: fc.constantFrom(...'0123456789abcdefghijklmnopqrstuvwxyz'), minLength: n, maxLength: n })
      .map((d) => ('0'.repeat(zeros) + d).slice(-13)),
  );
/** Any text of the cursor grammar (some beyond the positions a row can have). */
const grammarText = fc.tuple(digits, digits).map(([a, b]) => `${a}.${b}`);
/** Base 36, digit by digit: independent of both implementations. */
const value = (d: string) =>
  [...d].reduce((acc, ch) => acc * 36n + BigInt('0123456789abcdefghijklmnopqrstuvwxyz'.indexOf(ch)), 0n);
const inRange = (text: string) => {
  const [t = '', i = ''] = text.split('.');
  return value(t) <= I64 && value(i) <= I64;
};
/** Cursors the server accepts: its own encodings and any in-range text of the grammar. */
const cursorText = fc.oneof(position.map(encodeCursor), grammarText.filter(inRange));

describe('cursor codec', () => {
  it('encode/decode round-trips every bigint position, and the encoding is canonical', () => {
    fc.assert(
      fc.property(position, (p) => {
        const text = encodeCursor(p);
        expect(decodeCursor(text)).toEqual(p);
        expect(text).toMatch(/^(0|[1-9a-z][0-9a-z]*)\.(0|[1-9a-z][0-9a-z]*)$/);
      }),
      { numRuns: 2000 },
    );
    expect(encodeCursor(ZERO)).toBe('0.0');
    expect(encodeCursor({ seq: I64, id: 0n })).toBe('1y2p0ij32e8e7.0');
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

  it('(property) decodes text of the grammar exactly when its position is one a row can have', () => {
    fc.assert(
      fc.property(grammarText, (text) => {
        const [t = '', i = ''] = text.split('.');
        expect(decodeCursor(text)).toEqual(inRange(text) ? { seq: value(t), id: value(i) } : undefined);
      }),
      { numRuns: 3000 },
    );
  });

  it('refuses a position no outbox row can have: a key or an id beyond bigint (2^63 - 1)', () => {
    // Thirteen base-36 digits reach 36^13 - 1 (about 1.7e20): the grammar alone lets these through,
    // and PostgreSQL would refuse them in a replay's query (the resume failing with 4009, again
    // on every reconnect) instead of the client being told bad_cursor.
    expect(decodeCursor(encodeCursor({ seq: I64, id: I64 }))).toEqual({ seq: I64, id: I64 });
    expect(decodeCursor(encodeCursor({ seq: I64 + 1n, id: 0n }))).toBeUndefined();
    expect(decodeCursor(encodeCursor({ seq: 5n, id: 2n ** 63n }))).toBeUndefined();
    expect(decodeCursor('zzzzzzzzzzzzz.0')).toBeUndefined();
    expect(decodeCursor('5.zzzzzzzzzzzzz')).toBeUndefined();
  });

  it('refuses what is not a cursor', () => {
    for (const bad of [
      '',
      '.',
      '1',
      '1.',
      '.1',
      '1.2.3',
      '1,2',
      ' 1.2',
      '1.2 ',
      'A.1',
      '-1.2',
      '1.+2',
      '00000000000000.1',
      'é.1',
      `${'1'.repeat(41)}`,
    ]) {
      expect(decodeCursor(bad), bad).toBeUndefined();
    }
    for (const bad of [undefined, null, 12, { seq: 1 }, ['1.2']]) expect(decodeCursor(bad)).toBeUndefined();
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
      { numRuns: 3000 },
    );
  });

  it('(property) and on every pair of positions, including neighbours a double cannot tell apart', () => {
    const near = fc.tuple(position, fc.constantFrom(-1n, 0n, 1n), fc.constantFrom(-1n, 0n, 1n)).map(
      ([p, dt, di]) =>
        [
          p,
          {
            seq: p.seq + dt < 0n || p.seq + dt > I64 ? p.seq : p.seq + dt,
            id: p.id + di < 0n || p.id + di > I64 ? p.id : p.id + di,
          },
        ] as const,
    );
    fc.assert(
      fc.property(near, ([a, b]) => {
        expect(compareCursors(encodeCursor(a), encodeCursor(b))).toBe(Math.sign(compare(a, b)));
      }),
      { numRuns: 2000 },
    );
    const big = 2n ** 60n;
    expect(compareCursors(encodeCursor({ seq: big, id: 0n }), encodeCursor({ seq: big + 1n, id: 0n }))).toBe(-1);
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
