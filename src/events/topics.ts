/*
 * Topic routing and authorization. Topics nest: committee:C ⊂ election:E ⊂ election:*.
 * An event of committee C in election E is published on all three; each socket is
 * subscribed in uWebSockets.js to a *cover* of its topics in which no two nest, so it
 * receives every event once, however its requested topics overlap.
 */

export type ParsedTopic =
  | { kind: 'all' }
  | { kind: 'election'; id: number }
  | { kind: 'committee'; id: number }
  | { kind: 'user'; sub: string };

export const ALL = 'election:*';

export function parseTopic(topic: string): ParsedTopic | undefined {
  if (topic === ALL) return { kind: 'all' };
  let m = /^election:([0-9]{1,15})$/.exec(topic);
  if (m?.[1]) return { kind: 'election', id: Number(m[1]) };
  m = /^committee:([0-9]{1,15})$/.exec(topic);
  if (m?.[1]) return { kind: 'committee', id: Number(m[1]) };
  m = /^user:(\S{1,200})$/.exec(topic);
  if (m?.[1]) return { kind: 'user', sub: m[1] };
  return undefined;
}

/** The topics an event is published on. */
export function eventTopics(e: { electionId: number | null; committeeId: number | null; topic: string | null }): string[] {
  if (e.topic !== null && e.topic.startsWith('user:')) return [e.topic];
  const topics: string[] = [];
  if (e.committeeId !== null) topics.push(`committee:${e.committeeId}`);
  if (e.electionId !== null) topics.push(`election:${e.electionId}`);
  topics.push(ALL);
  return topics;
}

export type Claims = {
  readonly sub: string;
  readonly role: string | undefined;
  readonly elections: readonly number[];
  readonly committees: readonly number[];
  readonly exp: number | undefined;
};

export const isAdmin = (c: Claims) => c.role === 'admin';

/** What a connection auto-subscribes on open. */
export function claimTopics(c: Claims): string[] {
  if (isAdmin(c)) return [ALL, `user:${c.sub}`];
  return [...c.elections.map((e) => `election:${e}`), ...c.committees.map((id) => `committee:${id}`), `user:${c.sub}`];
}

/** Committee → election, as far as this node knows (loaded from the committees table). */
export type ElectionOf = (committeeId: number) => number | undefined;

export function mayUse(c: Claims, topic: ParsedTopic, electionOf: ElectionOf): boolean {
  if (isAdmin(c)) return true;
  switch (topic.kind) {
    case 'all':
      return false;
    case 'election':
      return c.elections.includes(topic.id);
    case 'committee': {
      if (c.committees.includes(topic.id)) return true;
      const e = electionOf(topic.id);
      return e !== undefined && c.elections.includes(e);
    }
    case 'user':
      return topic.sub === c.sub;
  }
}

/** The uWebSockets.js topics to subscribe for a set of requested topics: no two nest. */
export function coverOf(topics: Iterable<string>, electionOf: ElectionOf): Set<string> {
  const list = [...topics];
  const cover = new Set<string>();
  const hasAll = list.includes(ALL);
  const elections = new Set<number>();
  for (const t of list) {
    const p = parseTopic(t);
    if (p?.kind === 'election') elections.add(p.id);
  }
  for (const t of list) {
    const p = parseTopic(t);
    if (!p) continue;
    if (p.kind === 'user') cover.add(t);
    else if (hasAll) cover.add(ALL);
    else if (p.kind === 'election') cover.add(t);
    else if (p.kind === 'committee') {
      const e = electionOf(p.id);
      if (e === undefined || !elections.has(e)) cover.add(t);
    }
  }
  return cover;
}

/** Does an event published on `published` belong to any of `subscribed`? */
export function matches(published: readonly string[], subscribed: ReadonlySet<string>): boolean {
  for (const t of published) if (subscribed.has(t)) return true;
  return false;
}
