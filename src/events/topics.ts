/*
 * Topic routing and authorization.
 *
 * Ids. Election and committee ids are bigints; inside the hub they are `Id`s, the canonical
 * decimal text (no leading zeros), so ids beyond 2^53 stay exact. Frames carry them as JSON
 * numbers when they are safe integers and as JSON strings otherwise (`jsonId`).
 *
 * Topics have one spelling: `election:*`, `election:{id}`, `committee:{id}`, `dashboard:{id}`,
 * `user:{sub}`, ids without leading zeros and within the bigint range; anything else is not a topic.
 *
 * Dashboards. Election E's `dashboard_update` frames are published once, on the internal topic
 * `d:E` (`dashboardTopic`), which the cover of both `election:E` and `dashboard:E` contains: a
 * socket on both gets each update once, and `dashboard:E` carries nothing else (no rows).
 * `election:*` alone does not receive dashboard updates (an admin following every row does
 * not make every election's totals maintained); an admin may subscribe any `dashboard:E`.
 *
 * The delivery rule (live and replay alike), for a row of committee C in election E
 * (either may be null), and a socket with claims K that requested the topics T:
 *   - `election:*` in T, or `election:E` in T: it receives the row;
 *   - `committee:C` in T: it receives the row if K is an admin, C is in K's `committees`,
 *     or E is in K's `elections`. The row's own election decides, at the time of the row,
 *     whatever the committees table said when the socket subscribed.
 * Application events route the same way; `user:{sub}` events only reach that topic.
 *
 * Live fan-out follows the rule with native uWS topics and no per-socket work per event.
 * A row of (E, C) is published once on each of `election:*`, `election:E` and the internal
 * topic `c:E:C` (`c::C` without an election). Each socket subscribes a *cover* of its topics
 * in which no two overlap, so it gets every event at most once:
 *   - `election:*` covers everything but user topics;
 *   - `election:E` is itself;
 *   - `committee:C` is `c:E:C` for the election E that C's rows currently come from, if the
 *     socket may see C's rows there and `election:E` does not already cover them; else nothing.
 * "Currently" is per node and follows the row stream: delivery keeps, for every committee some
 * live socket requested, the election of its last published row and the sockets that requested
 * it. A row of C from another election (the committee moved, or the application writes rows
 * that disagree) first re-targets only those sockets (leave `c:old:C`, join `c:E:C` where the
 * rule allows), synchronously, then is published: each row reaches exactly the sockets the
 * rule admits. No committee→election map is needed for delivery; the committees table is
 * consulted only to admit `committee:C` through an election claim (cached, bounded staleness).
 * Cost: one re-target per socket of C each time C's rows change election (rare; an application
 * that interleaves rows of one committee under two elections pays it on every switch).
 */

/** A bigint id as its canonical decimal text. */
export type Id = string;

const MAX_ID = '9223372036854775807';

/** The id a topic, claim or path names: digits without leading zeros, in the bigint range. */
export function parseId(text: string): Id | undefined {
  if (!/^(0|[1-9][0-9]{0,18})$/.test(text)) return undefined;
  if (text.length === 19 && text > MAX_ID) return undefined;
  return text;
}

/** An id as it appears in JSON frames: a number when it is a safe integer, else its exact string. */
export function idValue(id: Id): number | string {
  const n = Number(id);
  return Number.isSafeInteger(n) ? n : id;
}

/** The JSON text of an id (see `idValue`); `null` for none. */
export const jsonId = (id: Id | null): string =>
  id === null ? 'null' : typeof idValue(id) === 'number' ? id : `"${id}"`;

/** Orders ids numerically (for sorted lists in snapshots). */
export function compareIds(a: Id, b: Id): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

export type ParsedTopic =
  | { kind: 'all' }
  | { kind: 'election'; id: Id }
  | { kind: 'committee'; id: Id }
  | { kind: 'dashboard'; id: Id }
  | { kind: 'user'; sub: string };

export const ALL = 'election:*';

export function parseTopic(topic: string): ParsedTopic | undefined {
  if (topic === ALL) return { kind: 'all' };
  let m = /^election:(\d+)$/.exec(topic);
  if (m?.[1]) {
    const id = parseId(m[1]);
    return id === undefined ? undefined : { kind: 'election', id };
  }
  m = /^committee:(\d+)$/.exec(topic);
  if (m?.[1]) {
    const id = parseId(m[1]);
    return id === undefined ? undefined : { kind: 'committee', id };
  }
  m = /^dashboard:(\d+)$/.exec(topic);
  if (m?.[1]) {
    const id = parseId(m[1]);
    return id === undefined ? undefined : { kind: 'dashboard', id };
  }
  m = /^user:(\S{1,200})$/.exec(topic);
  if (m?.[1]) return { kind: 'user', sub: m[1] };
  return undefined;
}

type Routed = { electionId: Id | null; committeeId: Id | null; topic: string | null };

/** The public topics an event belongs to (contract: committee:C, election:E, election:*, or its user topic). */
export function eventTopics(e: {
  electionId: Id | number | null;
  committeeId: Id | number | null;
  topic: string | null;
}): string[] {
  if (e.topic !== null && e.topic.startsWith('user:')) return [e.topic];
  const topics: string[] = [];
  if (e.committeeId !== null) topics.push(`committee:${e.committeeId}`);
  if (e.electionId !== null) topics.push(`election:${e.electionId}`);
  topics.push(ALL);
  return topics;
}

/** Where election E's `dashboard_update` frames are published (covered by `election:E` and `dashboard:E`). */
export const dashboardTopic = (election: Id) => `d:${election}`;

/** The elections whose dashboard a set of requested topics receives (`election:E`, `dashboard:E`). */
export function dashboardsOf(topics: Iterable<string>): Id[] {
  const out = new Set<Id>();
  for (const t of topics) {
    const p = parseTopic(t);
    if (p?.kind === 'election' || p?.kind === 'dashboard') out.add(p.id);
  }
  return [...out];
}

/** Where committee C's rows go while they come from election key `at` ('' = no election). */
export const committeeIn = (at: string, committee: Id) => `c:${at}:${committee}`;

/** Election key of a committee nobody has seen a row of yet: its sockets join nothing until one comes. */
export const UNKNOWN = '?';

/** The uWS topics an event is published on (see the top of this file). */
export function routeTopics(e: Routed): string[] {
  if (e.topic !== null && e.topic.startsWith('user:')) return [e.topic];
  const topics: string[] = [];
  if (e.committeeId !== null) topics.push(committeeIn(e.electionId ?? '', e.committeeId));
  if (e.electionId !== null) topics.push(`election:${e.electionId}`);
  topics.push(ALL);
  return topics;
}

export type Claims = {
  readonly sub: string;
  readonly role: string | undefined;
  readonly elections: readonly Id[];
  readonly committees: readonly Id[];
  readonly exp: number | undefined;
};

export const isAdmin = (c: Claims) => c.role === 'admin';

// Claims can name 10 000 ids: membership tests go through sets, built once per claims object.
const claimSets = new WeakMap<Claims, { elections: ReadonlySet<Id>; committees: ReadonlySet<Id> }>();
const setsOf = (c: Claims) => {
  let s = claimSets.get(c);
  if (!s) claimSets.set(c, (s = { elections: new Set(c.elections), committees: new Set(c.committees) }));
  return s;
};
export const holdsElection = (c: Claims, election: Id | null | undefined): boolean =>
  election != null && setsOf(c).elections.has(election);
export const holdsCommittee = (c: Claims, committee: Id): boolean => setsOf(c).committees.has(committee);

/** May these claims see rows of `committee` that come from `election`? */
export const mayReceive = (c: Claims, committee: Id, election: Id | null): boolean =>
  isAdmin(c) || holdsCommittee(c, committee) || holdsElection(c, election);

/** What a connection auto-subscribes on open. */
export function claimTopics(c: Claims): string[] {
  if (isAdmin(c)) return [ALL, `user:${c.sub}`];
  return [...c.elections.map((e) => `election:${e}`), ...c.committees.map((id) => `committee:${id}`), `user:${c.sub}`];
}

/**
 * May these claims subscribe `topic`, from the claims alone? `'lookup'`: only the committee's
 * election can tell (a non-admin naming a committee outside its `committees` while it holds
 * elections). A token without elections never causes a lookup.
 */
export function admitByClaims(c: Claims, topic: ParsedTopic): boolean | 'lookup' {
  if (isAdmin(c)) return true;
  switch (topic.kind) {
    case 'all':
      return false;
    case 'election':
    case 'dashboard':
      return holdsElection(c, topic.id);
    case 'committee':
      if (holdsCommittee(c, topic.id)) return true;
      return c.elections.length > 0 ? 'lookup' : false;
    case 'user':
      return topic.sub === c.sub;
  }
}

/** Committee → election as the committees table says (within its cache's staleness); null: no such committee. */
export type ElectionOf = (committeeId: Id) => Id | null | undefined;

/** Admission with whatever `electionOf` knows (HTTP routes: election topics only need the claims). */
export function mayUse(c: Claims, topic: ParsedTopic, electionOf: ElectionOf): boolean {
  const v = admitByClaims(c, topic);
  if (v !== 'lookup') return v;
  return topic.kind === 'committee' && holdsElection(c, electionOf(topic.id));
}

/** The delivery rule (top of this file): does an event reach a socket that requested `topics`? */
export function receives(c: Claims, topics: ReadonlySet<string>, e: Routed): boolean {
  if (e.topic !== null && e.topic.startsWith('user:')) return topics.has(e.topic);
  if (topics.has(ALL)) return true;
  if (e.electionId !== null && topics.has(`election:${e.electionId}`)) return true;
  return (
    e.committeeId !== null && topics.has(`committee:${e.committeeId}`) && mayReceive(c, e.committeeId, e.electionId)
  );
}

/** The cover topic for requested `committee:C` while C's rows come from election key `at`, if any. */
export function committeeCover(c: Claims, topics: ReadonlySet<string>, committee: Id, at: string): string | undefined {
  if (at === UNKNOWN || topics.has(ALL)) return undefined;
  const election = at === '' ? null : at;
  if (election !== null && topics.has(`election:${election}`)) return undefined; // covered by the election topic
  return mayReceive(c, committee, election) ? committeeIn(at, committee) : undefined;
}

/** The uWebSockets.js topics to subscribe for a set of requested topics: no two overlap. */
export function coverOf(c: Claims, topics: ReadonlySet<string>, at: (committee: Id) => string): Set<string> {
  const cover = new Set<string>();
  const all = topics.has(ALL);
  for (const t of topics) {
    const p = parseTopic(t);
    if (!p) continue;
    if (p.kind === 'user') cover.add(t);
    else if (p.kind === 'dashboard') cover.add(dashboardTopic(p.id));
    else if (p.kind === 'election') {
      cover.add(dashboardTopic(p.id)); // the election's totals, whatever covers its rows
      cover.add(all ? ALL : t);
    } else if (all) cover.add(ALL);
    else if (p.kind === 'committee') {
      const u = committeeCover(c, topics, p.id, at(p.id));
      if (u) cover.add(u);
    }
  }
  return cover;
}
