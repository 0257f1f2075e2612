import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ALL,
  type Claims,
  type Id,
  UNKNOWN,
  admitByClaims,
  claimTopics,
  committeeCover,
  committeeIn,
  coverOf,
  coverOf as coverOfAll,
  eventTopics,
  idValue,
  jsonId,
  mayUse,
  parseId,
  parseTopic,
  receives,
  routeTopics,
} from './topics.ts';

const claims = (c: Partial<Claims> = {}): Claims => ({
  sub: 'ana',
  role: undefined,
  elections: [],
  committees: [],
  exp: undefined,
  ...c,
});
const admin = claims({ role: 'admin' });
const row = (electionId: Id | null, committeeId: Id | null, topic: string | null = null) => ({
  electionId,
  committeeId,
  topic,
});

describe('ids and topics: one spelling', () => {
  it('parseId takes canonical decimal bigints only', () => {
    for (const ok of ['0', '7', '10', '9007199254740993', '9223372036854775807']) expect(parseId(ok)).toBe(ok);
    for (const bad of [
      '',
      '007',
      '00',
      '+7',
      '-1',
      ' 7',
      '7 ',
      '1e3',
      '0x10',
      '7.0',
      '9223372036854775808',
      '99999999999999999999',
      '١',
    ]) {
      expect(parseId(bad), bad).toBeUndefined();
    }
  });

  it('parseTopic knows the four kinds and refuses every other spelling', () => {
    expect(parseTopic('election:*')).toEqual({ kind: 'all' });
    expect(parseTopic('election:5')).toEqual({ kind: 'election', id: '5' });
    expect(parseTopic('committee:0')).toEqual({ kind: 'committee', id: '0' });
    expect(parseTopic('user:ana@x.org')).toEqual({ kind: 'user', sub: 'ana@x.org' });
    for (const bad of [
      'election:01',
      'committee:+7',
      'election: 5',
      'election:5 ',
      'Election:5',
      'election:',
      'committee:',
      'election:**',
      'election:9223372036854775808',
      'user:',
      'user:a b',
      `user:${'x'.repeat(201)}`,
      'c:1:2',
      'dashboard',
      '',
      'election:5:6',
    ]) {
      expect(parseTopic(bad), bad).toBeUndefined();
    }
  });

  it('a parsed topic prints back as the same text (property: the spelling is unique)', () => {
    const id = fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }).map(String);
    const print = (p: NonNullable<ReturnType<typeof parseTopic>>) =>
      p.kind === 'all' ? ALL : p.kind === 'user' ? `user:${p.sub}` : `${p.kind}:${p.id}`;
    fc.assert(
      fc.property(
        fc.oneof(
          id.map((i) => `election:${i}`),
          id.map((i) => `committee:${i}`),
          // Leading zeros, signs and spaces: other spellings of the same number.
          fc
            .tuple(fc.constantFrom('election:', 'committee:'), fc.constantFrom('0', '00', '+', ' ', '-'), id)
            .map(([k, pre, i]) => `${k}${pre}${i}`),
          fc.string({ maxLength: 30 }),
        ),
        (text) => {
          const p = parseTopic(text);
          if (p !== undefined) expect(print(p)).toBe(text);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('ids travel as JSON numbers while safe, else as exact strings', () => {
    expect(idValue('9007199254740991')).toBe(9007199254740991);
    expect(idValue('9007199254740993')).toBe('9007199254740993');
    expect(jsonId('5')).toBe('5');
    expect(jsonId('9223372036854775807')).toBe('"9223372036854775807"');
    expect(jsonId(null)).toBe('null');
  });
});

describe('rights: mayUse and admitByClaims', () => {
  const electionOf = (c: Id) => ({ '70': '7', '80': '8' })[c] ?? null;
  const t = (text: string) => parseTopic(text) as NonNullable<ReturnType<typeof parseTopic>>;

  it('an admin may use every topic', () => {
    for (const topic of [ALL, 'election:1', 'committee:70', 'user:bob'])
      expect(mayUse(admin, t(topic), electionOf), topic).toBe(true);
  });

  it('a viewer: its elections, its committees, the committees of its elections, its own user topic; nothing else', () => {
    const viewer = claims({ elections: ['7'], committees: ['99'] });
    expect(mayUse(viewer, t('election:7'), electionOf)).toBe(true);
    expect(mayUse(viewer, t('election:8'), electionOf)).toBe(false);
    expect(mayUse(viewer, t(ALL), electionOf)).toBe(false);
    expect(mayUse(viewer, t('committee:99'), electionOf)).toBe(true); // claimed directly (no such committee needed)
    expect(mayUse(viewer, t('committee:70'), electionOf)).toBe(true); // committee of election 7
    expect(mayUse(viewer, t('committee:80'), electionOf)).toBe(false);
    expect(mayUse(viewer, t('committee:12'), electionOf)).toBe(false); // no such committee
    expect(mayUse(viewer, t('user:ana'), electionOf)).toBe(true);
    expect(mayUse(viewer, t('user:bob'), electionOf)).toBe(false);
  });

  it('only a committee outside the claimed ones, for a token holding elections, needs a lookup', () => {
    expect(admitByClaims(claims({ elections: ['7'] }), t('committee:70'))).toBe('lookup');
    expect(admitByClaims(claims({ committees: ['70'] }), t('committee:70'))).toBe(true);
    expect(admitByClaims(claims(), t('committee:70'))).toBe(false); // no elections: never a lookup
    expect(admitByClaims(admin, t('committee:70'))).toBe(true);
  });

  it('claimTopics: what a connection auto-subscribes', () => {
    expect(claimTopics(admin)).toEqual([ALL, 'user:ana']);
    expect(claimTopics(claims({ elections: ['1', '2'], committees: ['7'] }))).toEqual([
      'election:1',
      'election:2',
      'committee:7',
      'user:ana',
    ]);
  });
});

describe('routing', () => {
  it('an event is on committee:C, election:E and election:*; its uWS topics put the committee under its election', () => {
    expect(eventTopics(row('1', '7'))).toEqual(['committee:7', 'election:1', ALL]);
    expect(routeTopics(row('1', '7'))).toEqual(['c:1:7', 'election:1', ALL]);
    expect(routeTopics(row(null, '7'))).toEqual(['c::7', ALL]);
    expect(routeTopics(row('1', null))).toEqual(['election:1', ALL]);
    expect(routeTopics(row(null, null, 'user:ana'))).toEqual(['user:ana']);
    expect(eventTopics(row('1', '7', 'user:ana'))).toEqual(['user:ana']);
  });

  it('receives: the delivery rule decides with the row’s own election', () => {
    const viewer = claims({ elections: ['1'] });
    const topics = new Set(['committee:7']);
    expect(receives(viewer, topics, row('1', '7'))).toBe(true);
    expect(receives(viewer, topics, row('2', '7'))).toBe(false); // the committee moved to election 2
    expect(receives(claims({ committees: ['7'] }), topics, row('2', '7'))).toBe(true);
    expect(receives(viewer, new Set(['election:2']), row('2', '7'))).toBe(true); // election topics are taken as granted
    expect(receives(admin, new Set([ALL]), row(null, null, 'user:bob'))).toBe(false); // user topics only by name
    expect(receives(admin, new Set(['user:bob']), row(null, null, 'user:bob'))).toBe(true);
  });

  it('committeeCover: nothing while unknown or covered, else the committee under its current election if allowed', () => {
    const viewer = claims({ elections: ['1'] });
    expect(committeeCover(viewer, new Set(['committee:7']), '7', UNKNOWN)).toBeUndefined();
    expect(committeeCover(viewer, new Set(['committee:7']), '7', '1')).toBe('c:1:7');
    expect(committeeCover(viewer, new Set(['committee:7']), '7', '2')).toBeUndefined();
    expect(committeeCover(viewer, new Set(['committee:7', 'election:1']), '7', '1')).toBeUndefined();
    expect(committeeCover(viewer, new Set(['committee:7', ALL]), '7', '1')).toBeUndefined();
    expect(committeeCover(claims({ committees: ['7'] }), new Set(['committee:7']), '7', '')).toBe('c::7');
  });

  it('coverOf: election:* swallows every non-user topic; user topics stay', () => {
    const at = () => '1';
    // Election topics also join their dashboard channel d:E (dashboard_update frames only, no rows).
    const coverOf = (...args: Parameters<typeof coverOfAll>) =>
      new Set([...coverOfAll(...args)].filter((t) => !t.startsWith('d:')));
    expect(coverOf(admin, new Set([ALL, 'election:1', 'committee:7', 'user:ana']), at)).toEqual(
      new Set([ALL, 'user:ana']),
    );
    expect(
      coverOf(admin, new Set(['election:1', 'committee:7', 'committee:8']), (c) => (c === '7' ? '1' : '2')),
    ).toEqual(new Set(['election:1', 'c:2:8']));
    expect(coverOf(admin, new Set(['not a topic']), at)).toEqual(new Set());
  });
});

// ---- the cover is exact: a model of uWS topics -----------------------------------------

/**
 * uWS's topic fan-out as a model: a message published on a topic reaches each socket
 * subscribed to it, once per topic. Sockets subscribe the cover of their requested topics,
 * recomputed before each row with where each committee's rows currently come from (what
 * src/hub/delivery.ts maintains incrementally; src/hub/delivery.test.ts checks that one).
 */
describe('the live cover (property)', () => {
  const E = ['1', '2', '3'];
  const C = ['10', '11', '12', '13'];
  const id = (ids: string[]) => fc.constantFrom(...ids);
  const arbClaims = fc.record({
    sub: fc.constantFrom('ana', 'bob'),
    role: fc.constantFrom(undefined, 'admin', 'viewer'),
    elections: fc.uniqueArray(id(E), { maxLength: 2 }),
    committees: fc.uniqueArray(id(C), { maxLength: 2 }),
    exp: fc.constant(undefined),
  });
  const arbTopic = fc.oneof(
    fc.constant(ALL),
    id(E).map((e) => `election:${e}`),
    id(C).map((c) => `committee:${c}`),
    fc.constantFrom('user:ana', 'user:bob'),
  );
  const arbRow = fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        electionId: fc.option(id(E), { freq: 6 }),
        committeeId: fc.option(id(C), { freq: 6 }),
        topic: fc.constant(null),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        electionId: fc.constant(null),
        committeeId: fc.constant(null),
        topic: fc.constantFrom('user:ana', 'user:bob'),
      }),
    },
  );
  // The committees table as the hub's directory saw it (admission only; rows may disagree).
  const arbDirectory = fc.dictionary(id(C), id(E));

  it('each row reaches a socket at most once, and exactly when `receives` says so', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ claims: arbClaims, requested: fc.uniqueArray(arbTopic, { maxLength: 5 }) }), {
          minLength: 1,
          maxLength: 6,
        }),
        arbDirectory,
        fc.array(arbRow, { minLength: 1, maxLength: 30 }),
        (socketSpecs, directory, rows) => {
          const electionOf = (c: Id) => directory[c] ?? null;
          // Admission as the server does it: a socket holds only the topics it may use.
          const sockets = socketSpecs.map((s) => ({
            claims: s.claims as Claims,
            topics: new Set(
              s.requested.filter((t) =>
                mayUse(s.claims as Claims, parseTopic(t) as NonNullable<ReturnType<typeof parseTopic>>, electionOf),
              ),
            ),
          }));
          const at = new Map<Id, string>(); // committee -> election key of its last row ('' none)
          for (const r of rows) {
            if (r.committeeId !== null && r.topic === null) at.set(r.committeeId, r.electionId ?? '');
            const subscribers = new Map<string, number[]>();
            sockets.forEach((s, i) => {
              for (const t of coverOf(s.claims, s.topics, (c) => at.get(c) ?? UNKNOWN))
                subscribers.set(t, [...(subscribers.get(t) ?? []), i]);
            });
            const got = sockets.map(() => 0);
            for (const t of routeTopics(r)) for (const i of subscribers.get(t) ?? []) got[i] = (got[i] ?? 0) + 1;
            sockets.forEach((s, i) => {
              expect(got[i], JSON.stringify({ claims: s.claims, topics: [...s.topics], row: r })).toBe(
                receives(s.claims, s.topics, r) ? 1 : 0,
              );
            });
          }
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('the cover never overlaps: no two of its topics carry the same row', () => {
    fc.assert(
      fc.property(
        arbClaims,
        fc.uniqueArray(arbTopic, { maxLength: 6 }),
        fc.dictionary(id(C), fc.constantFrom('', UNKNOWN, ...E)),
        arbRow,
        (c, requested, where, r) => {
          const cover = coverOf(c as Claims, new Set(requested), (x) => where[x] ?? UNKNOWN);
          const hits = routeTopics(r).filter((t) => cover.has(t));
          expect(hits.length).toBeLessThanOrEqual(1);
          for (const t of cover)
            expect(
              t === ALL ||
                t.startsWith('election:') ||
                t.startsWith('user:') ||
                t.startsWith('c:') ||
                t.startsWith('d:'),
            ).toBe(true);
          for (const t of cover) if (t.startsWith('c:')) expect(requested).toContain(`committee:${t.split(':')[2]}`);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('committeeIn names the internal topic no client can subscribe', () => {
    expect(committeeIn('1', '7')).toBe('c:1:7');
    expect(parseTopic(committeeIn('1', '7'))).toBeUndefined();
  });
});
