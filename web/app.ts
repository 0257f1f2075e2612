// The live dashboard page: plain DOM, no framework. Data comes from ./live.ts; this file keeps
// the latest state per election and draws what changed, at most once per animation frame.
import {
  type CommitteeCounts,
  type Counts,
  type Id,
  type LinkState,
  type RowEvent,
  type Snapshot,
  compareIds,
  idOf,
  startLive,
} from './live.ts';

type Directory = { elections: Array<{ id: Id; name: string; committees?: Array<{ id: Id; name: string }> }> };
type Election = {
  id: Id;
  name: string;
  committeeNames: Map<string, string>;
  snapshot: Snapshot | undefined;
  feed: RowEvent[];
};

const FIELDS = ['guarantees', 'attendance', 'votes'] as const;
type Field = (typeof FIELDS)[number];
const LABEL: Record<Field, string> = { guarantees: 'Guarantees', attendance: 'Attendance', votes: 'Votes' };
const FEED_SIZE = 50;
const TOKEN_KEY = 'election-hub.token';

const numbers = new Intl.NumberFormat('en-US');
const clock = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' });

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from index.html`);
  return el as T;
};

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

// ---- where the page starts from: token, elections, names -----------------------------------

function fragment(): URLSearchParams {
  return new URLSearchParams(location.hash.replace(/^#/, ''));
}

function setFragment(update: Record<string, string | undefined>): void {
  const params = fragment();
  for (const [k, v] of Object.entries(update)) {
    if (v === undefined) params.delete(k);
    else params.set(k, v);
  }
  history.replaceState(null, '', `${location.pathname}${location.search}#${params.toString()}`);
}

/** The claims the page needs (the hub verifies the token; this only decides what to show). */
function claimsOf(token: string): { role?: string; elections: Id[] } {
  try {
    const payload = token.split('.')[1] ?? '';
    const json = atob(
      payload
        .replace(/-/g, '+')
        .replace(/_/g, '/')
        .padEnd(Math.ceil(payload.length / 4) * 4, '='),
    );
    const c = JSON.parse(json) as { role?: unknown; elections?: unknown };
    const elections = Array.isArray(c.elections)
      ? c.elections.flatMap((x) => idOf(String(x).replace(/^0+(?=.)/, '')) ?? [])
      : [];
    return { ...(typeof c.role === 'string' ? { role: c.role } : {}), elections };
  } catch {
    return { elections: [] };
  }
}

/** Names the demo embeds into the page (`<script id="hub-directory">`); a deployment has none. */
function directory(): Directory {
  const el = document.getElementById('hub-directory');
  if (!el?.textContent) return { elections: [] };
  try {
    const d = JSON.parse(el.textContent) as Directory;
    return Array.isArray(d.elections) ? d : { elections: [] };
  } catch {
    return { elections: [] };
  }
}

// ---- state ---------------------------------------------------------------------------------

const elections = new Map<string, Election>();
let selected: Id | undefined;
/** Row events received per second over the last minute (a ring of 60 buckets), for the changes/min figure. */
const perSecond = { buckets: new Array<number>(60).fill(0), second: Math.floor(Date.now() / 1000) };
/** What the page took in (tests read it: window.hubDashboard.received()). */
const received = { updates: 0, rows: 0, renders: 0 };

function electionEntry(id: Id): Election {
  let e = elections.get(String(id));
  if (!e) {
    e = { id, name: `Election ${id}`, committeeNames: new Map(), snapshot: undefined, feed: [] };
    elections.set(String(id), e);
  }
  return e;
}

/** Moves the per-second ring up to now (emptying the seconds that passed) and returns now's slot. */
function rollTo(nowMs: number): number {
  const now = Math.floor(nowMs / 1000);
  if (now - perSecond.second >= 60) perSecond.buckets.fill(0);
  else for (let t = perSecond.second + 1; t <= now; t++) perSecond.buckets[t % 60] = 0;
  perSecond.second = Math.max(perSecond.second, now);
  return now % 60;
}

function countRow(): void {
  const i = rollTo(Date.now());
  perSecond.buckets[i] = (perSecond.buckets[i] ?? 0) + 1;
}

// ---- rendering: only what changed, at most once per animation frame ------------------------
//
// Updates and rows only record what changed (`dirty`); one requestAnimationFrame callback
// draws it. Counters are updated in place through element references kept per committee (no
// selector lookups, no rebuilt lists). Nothing animates frame by frame: a counter that moved is
// marked (highlight and the difference) for a moment and unmarked later in a batch, so each
// change costs two style changes, not a repaint in every frame while it fades. Offscreen
// committee cards are not rendered at all (content-visibility). The feed moves in batches.

/** A counter's element, the box marked when it moves, and the badge with the difference. */
type Cell = { dd: HTMLElement; box: HTMLElement; delta: HTMLElement };
type CommitteeView = { card: HTMLElement; cells: Record<Field, Cell>; bar: HTMLElement };

const dirty = {
  /** Elections whose tab counters changed. */
  tabs: new Set<string>(),
  /** The selected election's headline (totals, turnout, provenance). */
  headline: false,
  /** Committees of the selected election to redraw; 'all' after a full state. */
  committees: new Set<string>() as Set<string> | 'all',
  /** Rows for the selected election's feed not drawn yet (newest last). */
  feed: [] as RowEvent[],
  animate: false,
};
let frameQueued = false;
/** The committee cards of the selected election by committee id (text). */
let views = new Map<string, CommitteeView>();
let gridKey = '';

function schedule(): void {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(render);
}

/** How long a moved counter stays marked. */
const MARK_MS = 1500;
/** Marked boxes, each with when to unmark it (a box marked again is unmarked later). */
const marked = new Map<HTMLElement, number>();
let unmarkTimer: ReturnType<typeof setTimeout> | undefined;

function mark(box: HTMLElement, up: boolean): void {
  box.dataset.moved = up ? 'up' : 'down';
  // Re-inserted: the map stays in unmarking order.
  marked.delete(box);
  marked.set(box, performance.now() + MARK_MS);
  if (unmarkTimer === undefined) unmarkTimer = setTimeout(unmarkDue, MARK_MS);
}

/** Unmarks every box whose time is up (one batch), and waits for the next. */
function unmarkDue(): void {
  unmarkTimer = undefined;
  const now = performance.now() + 16;
  for (const [box, at] of marked) {
    if (at > now) {
      unmarkTimer = setTimeout(unmarkDue, at - now + 16);
      return;
    }
    delete box.dataset.moved;
    marked.delete(box);
  }
}

/** Sets a counter; when it moved (and `animate`), flashes `cell` and shows the difference on its badge. */
function setCount(el: HTMLElement, value: number, animate: boolean, cell?: Omit<Cell, 'dd'>): void {
  const before = Number(el.dataset.value === '' || el.dataset.value === undefined ? Number.NaN : el.dataset.value);
  if (before === value) return;
  const text = numbers.format(value);
  el.dataset.value = String(value);
  el.textContent = text;
  // Counters size themselves to their box by their length (app.css: --chars): a six- or
  // seven-digit total still fits its card.
  if (el.dataset.chars !== String(text.length)) {
    el.dataset.chars = String(text.length);
    el.style.setProperty('--chars', String(text.length));
  }
  if (!animate || Number.isNaN(before) || !cell) return;
  const up = value > before;
  cell.delta.textContent = `${up ? '+' : '−'}${numbers.format(Math.abs(value - before))}`;
  mark(cell.box, up);
}

function drawElectionTabs(): void {
  const nav = $('elections');
  const ids = [...elections.values()].map((e) => e.id).sort(compareIds);
  // Rebuild only when the set of elections changed; counters are updated in place.
  if (nav.dataset.ids !== ids.join(',')) {
    nav.dataset.ids = ids.join(',');
    nav.replaceChildren(
      ...ids.map((id) => {
        const e = electionEntry(id);
        const tab = h(
          'button',
          { class: 'election', role: 'tab', type: 'button', 'data-election': String(id), 'aria-selected': 'false' },
          h('span', { class: 'election-name' }, e.name),
          h(
            'span',
            { class: 'election-counts' },
            ...FIELDS.map((f) =>
              h(
                'span',
                { class: `mini mini-${f}`, title: LABEL[f] },
                h('i', { class: `key key-${f}` }),
                h('b', { 'data-count': f }, '–'),
              ),
            ),
          ),
        );
        tab.addEventListener('click', () => select(id));
        return tab;
      }),
    );
    for (const e of elections.values()) dirty.tabs.add(String(e.id));
  }
  for (const tab of nav.children as HTMLCollectionOf<HTMLElement>) {
    const k = tab.dataset.election ?? '';
    const on = String(k === String(selected));
    if (tab.getAttribute('aria-selected') !== on) tab.setAttribute('aria-selected', on);
    if (!dirty.tabs.has(k)) continue;
    const snap = elections.get(k)?.snapshot;
    if (!snap) continue;
    for (const el of tab.querySelectorAll<HTMLElement>('[data-count]'))
      setCount(el, snap.totals[el.dataset.count as Field], false);
  }
  dirty.tabs.clear();
}

function committeeCard(e: Election, c: CommitteeCounts): CommitteeView {
  const name = e.committeeNames.get(String(c.committee_id)) ?? `Committee ${c.committee_id}`;
  const cells = {} as Record<Field, Cell>;
  const bar = h('span', { class: 'bar-fill' });
  const card = h(
    'article',
    { class: 'committee', 'data-committee': String(c.committee_id) },
    h('header', {}, h('h4', {}, name), h('span', { class: 'committee-id' }, `#${c.committee_id}`)),
    h(
      'dl',
      {},
      ...FIELDS.map((f) => {
        const dd = h('dd', { 'data-count': f, 'data-value': '' }, '');
        const delta = h('span', { class: 'delta', 'aria-hidden': 'true' });
        const box = h('div', { class: `cell cell-${f}` }, h('dt', {}, LABEL[f]), dd, delta);
        cells[f] = { dd, box, delta };
        return box;
      }),
    ),
    h('div', { class: 'bar', title: 'attendance of guaranteed voters' }, bar),
  );
  return { card, cells, bar };
}

function drawCommittee(v: CommitteeView, c: CommitteeCounts, animate: boolean): void {
  for (const f of FIELDS) setCount(v.cells[f].dd, c[f], animate, v.cells[f]);
  const share = c.guarantees > 0 ? Math.min(1, c.attendance / c.guarantees) : 0;
  const scale = `scaleX(${share.toFixed(3)})`;
  if (v.bar.style.transform !== scale) v.bar.style.transform = scale;
}

const headline = FIELDS.map((f) => {
  const el = document.querySelector<HTMLElement>(`[data-total="${f}"]`);
  if (!el) throw new Error(`[data-total="${f}"] missing from index.html`);
  const box = el.closest<HTMLElement>('.stat');
  if (!box) throw new Error(`[data-total="${f}"] is not in a .stat`);
  const delta = h('span', { class: 'delta', 'aria-hidden': 'true' });
  box.append(delta);
  return { f, el, cell: { box, delta } };
});

function drawSelected(): void {
  const e = selected === undefined ? undefined : elections.get(String(selected));
  if (!e) return;
  const snap = e.snapshot;
  const animate = dirty.animate;
  if (dirty.headline) {
    $('election-name').textContent = e.name;
    $('election-meta').textContent = snap ? `${snap.committees.length} committees · election #${e.id}` : 'loading…';
    if (snap) {
      for (const { f, el, cell } of headline) setCount(el, snap.totals[f], animate, cell);
      $('turnout').textContent = turnout(snap.totals);
      const prov = $('provenance');
      prov.replaceChildren(
        `Totals from the hub's dashboard updates (full state, then changes) · cursor `,
        h('code', {}, snap.cursor),
        ` · updated ${clock.format(new Date())}`,
      );
    }
  }
  if (snap) {
    const key = `${e.id}:${snap.committees.length}:${snap.committees.map((c) => c.committee_id).join(',')}`;
    if (dirty.committees === 'all' && key !== gridKey) {
      // A different set of committees (or another election): new cards, drawn without flashes.
      gridKey = key;
      views = new Map();
      const cards: HTMLElement[] = [];
      for (const c of snap.committees) {
        const v = committeeCard(e, c);
        views.set(String(c.committee_id), v);
        drawCommittee(v, c, false);
        cards.push(v.card);
      }
      $('committees').replaceChildren(...cards);
    } else if (dirty.committees === 'all') {
      for (const c of snap.committees) {
        const v = views.get(String(c.committee_id));
        if (v) drawCommittee(v, c, animate);
      }
    } else if (dirty.committees.size > 0) {
      const byId = committeeIndex(snap);
      for (const k of dirty.committees) {
        const v = views.get(k);
        const c = byId.get(k);
        if (v && c) drawCommittee(v, c, animate);
      }
    }
  }
  dirty.headline = false;
  dirty.committees = new Set();
}

/** committee id (text) → counts, for the snapshot object last indexed (snapshots are replaced, never mutated). */
let indexed: { snap: Snapshot; byId: Map<string, CommitteeCounts> } | undefined;
function committeeIndex(snap: Snapshot): Map<string, CommitteeCounts> {
  if (indexed?.snap !== snap)
    indexed = { snap, byId: new Map(snap.committees.map((c) => [String(c.committee_id), c])) };
  return indexed.byId;
}

function turnout(t: Counts): string {
  if (t.guarantees === 0) return 'voters checked in';
  return `${Math.round((t.attendance / t.guarantees) * 100)}% of guarantees`;
}

function describe(ev: RowEvent): { kind: Field; title: string; detail: string } {
  const d = ev.data;
  const who = typeof d.voter_name === 'string' && d.voter_name ? d.voter_name : 'a voter';
  switch (ev.type) {
    case 'guarantee_update':
      if (ev.action === 'created') return { kind: 'guarantees', title: 'Guarantee pledged', detail: who };
      if (ev.action === 'deleted') return { kind: 'guarantees', title: 'Guarantee removed', detail: who };
      return { kind: 'guarantees', title: `Guarantee ${String(d.status ?? 'updated')}`, detail: who };
    case 'attendance_update':
      if (ev.action === 'deleted') return { kind: 'attendance', title: 'Check-in removed', detail: who };
      return { kind: 'attendance', title: 'Voter attended', detail: who };
    case 'voting_update': {
      const candidate = String(d.candidate ?? 'unknown');
      if (ev.action === 'deleted') return { kind: 'votes', title: 'Votes row removed', detail: candidate };
      return {
        kind: 'votes',
        title: ev.action === 'created' ? 'Votes counted' : 'Votes recounted',
        detail: `${candidate} · ${numbers.format(Number(d.count ?? 0))}`,
      };
    }
  }
}

function feedItem(e: Election, ev: RowEvent): HTMLElement {
  const { kind, title, detail } = describe(ev);
  const committee =
    ev.committee_id === null ? '' : (e.committeeNames.get(String(ev.committee_id)) ?? `Committee ${ev.committee_id}`);
  const when = new Date(ev.committed_at);
  return h(
    'li',
    { class: `item item-${kind}`, 'data-cursor': ev.cursor },
    h('i', { class: `key key-${kind}` }),
    h(
      'div',
      { class: 'item-body' },
      h('span', { class: 'item-title' }, title),
      h('span', { class: 'item-detail' }, detail),
    ),
    h(
      'div',
      { class: 'item-meta' },
      h('time', { datetime: ev.committed_at }, Number.isNaN(when.getTime()) ? '' : clock.format(when)),
      h('span', {}, committee),
    ),
  );
}

/** Adds the rows that arrived since the last frame at the top and drops what falls off the end. */
function drawFeed(): void {
  const e = selected === undefined ? undefined : elections.get(String(selected));
  const list = $('feed');
  if (!e) return;
  const fresh = dirty.feed.slice(-FEED_SIZE);
  dirty.feed = [];
  if (fresh.length === 0) return;
  const frag = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i--) frag.append(feedItem(e, fresh[i] as RowEvent));
  list.prepend(frag);
  while (list.childElementCount > FEED_SIZE) list.lastElementChild?.remove();
  $('feed-count').textContent = `last ${list.childElementCount} changes`;
}

/** Draws the whole feed of the selected election (after selecting it). */
function redrawFeed(): void {
  const e = selected === undefined ? undefined : elections.get(String(selected));
  const list = $('feed');
  dirty.feed = [];
  if (!e) return list.replaceChildren();
  list.replaceChildren(...e.feed.map((ev) => feedItem(e, ev)));
  $('feed-count').textContent = e.feed.length ? `last ${e.feed.length} changes` : 'waiting for changes';
}

/** The feed moves at most this often: 300 rows a second are not read one frame at a time. */
const FEED_EVERY_MS = 250;
let feedDrawnAt = 0;
let feedTimer: ReturnType<typeof setTimeout> | undefined;

function render(): void {
  frameQueued = false;
  received.renders++;
  drawElectionTabs();
  drawSelected();
  const now = performance.now();
  if (dirty.feed.length > 0) {
    if (now - feedDrawnAt >= FEED_EVERY_MS) {
      feedDrawnAt = now;
      drawFeed();
    } else if (feedTimer === undefined) {
      feedTimer = setTimeout(
        () => {
          feedTimer = undefined;
          schedule();
        },
        FEED_EVERY_MS - (now - feedDrawnAt),
      );
    }
  }
  dirty.animate = false;
}

function drawRate(): void {
  rollTo(Date.now());
  const total = perSecond.buckets.reduce((a, b) => a + b, 0);
  $('rate').textContent = `${numbers.format(total)} changes/min`;
}

const STATE_TEXT: Record<LinkState, string> = {
  connecting: 'Connecting',
  connected: 'Connected',
  reconnecting: 'Reconnecting',
  resynced: 'Resynced',
};
let settleTimer: ReturnType<typeof setTimeout> | undefined;

function drawState(state: LinkState, detail: string): void {
  const badge = $('link');
  badge.dataset.state = state;
  badge.title = detail;
  badge.querySelector('.badge-text')!.textContent = STATE_TEXT[state];
  // Tests and curious operators can read the history: window.hubDashboard.states.
  dashboardHandle.states.push(state);
  clearTimeout(settleTimer);
  // "Resynced" says the page caught up after a loss; after a few seconds it is simply connected.
  if (state === 'resynced') settleTimer = setTimeout(() => drawState('connected', 'live'), 4000);
}

function select(id: Id): void {
  if (!elections.has(String(id))) return;
  selected = id;
  setFragment({ election: String(id) });
  $('empty').hidden = true;
  $('app').hidden = false;
  dirty.headline = true;
  dirty.committees = 'all';
  dirty.animate = false;
  gridKey = '';
  redrawFeed();
  render();
}

// ---- start ---------------------------------------------------------------------------------

const dashboardHandle = { states: [] as LinkState[], received: () => ({ ...received }) };
(window as unknown as { hubDashboard: typeof dashboardHandle }).hubDashboard = dashboardHandle;

function askForToken(message?: string): void {
  const badge = $('link');
  badge.dataset.state = 'offline';
  badge.title = message ?? 'no token';
  badge.querySelector('.badge-text')!.textContent = 'Signed out';
  $('app').hidden = true;
  $('empty').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.hidden = !message;
  err.textContent = message ?? '';
  $('token-input').focus();
}

function start(token: string): void {
  $('signin').hidden = true;
  const claims = claimsOf(token);
  const dir = directory();
  for (const d of dir.elections) {
    const e = electionEntry(d.id);
    e.name = d.name;
    for (const c of d.committees ?? []) e.committeeNames.set(String(c.id), c.name);
  }
  const fromFragment = (fragment().get('elections') ?? '').split(',').flatMap((t) => idOf(t) ?? []);
  for (const id of [...fromFragment, ...claims.elections]) electionEntry(id);
  const admin = claims.role === 'admin';

  const wanted = idOf(fragment().get('election') ?? '');
  const first =
    wanted !== undefined && elections.has(String(wanted))
      ? wanted
      : [...elections.values()].map((e) => e.id).sort(compareIds)[0];

  const live = startLive({
    origin: location.origin,
    token,
    elections: [...elections.values()].map((e) => e.id),
    discover: admin && elections.size === 0,
    onState: drawState,
    onFatal(message) {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(message);
    },
    onElection(id) {
      electionEntry(id);
      schedule();
      if (selected === undefined) select(id);
    },
    onDashboard(snap, change) {
      received.updates++;
      const e = electionEntry(snap.election_id);
      e.snapshot = snap;
      dirty.tabs.add(String(e.id));
      if (String(snap.election_id) === String(selected)) {
        dirty.headline = true;
        // Flash what moved, unless this is the page's first state of the election.
        dirty.animate ||= views.size > 0;
        if (change.full) dirty.committees = 'all';
        else if (dirty.committees !== 'all') for (const c of change.committees) dirty.committees.add(String(c));
      }
      schedule();
    },
    onEvent(ev) {
      if (ev.election_id === null) return;
      received.rows++;
      countRow();
      const e = electionEntry(ev.election_id);
      e.feed.unshift(ev);
      if (e.feed.length > FEED_SIZE) e.feed.length = FEED_SIZE;
      if (String(ev.election_id) === String(selected)) {
        dirty.feed.push(ev);
        if (dirty.feed.length > FEED_SIZE * 2) dirty.feed.splice(0, dirty.feed.length - FEED_SIZE);
        if (feedTimer === undefined) schedule();
      }
    },
  });

  if (first !== undefined) select(first);
  else {
    $('empty').hidden = false;
    $('open-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = idOf($<HTMLInputElement>('election-input').value.trim());
      if (id !== undefined) {
        electionEntry(id);
        live.watch(id);
        select(id);
      }
    });
  }
  setInterval(drawRate, 1000);
}

function boot(): void {
  const params = fragment();
  const fromUrl = params.get('token');
  if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
  const token = fromUrl ?? sessionStorage.getItem(TOKEN_KEY);
  // Keep the token out of the address bar (and screenshots) once it is read.
  if (fromUrl) setFragment({ token: undefined });
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $<HTMLTextAreaElement>('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    location.reload();
  });
  if (token) start(token);
  else askForToken();
}

boot();
