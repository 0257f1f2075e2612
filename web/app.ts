// The live dashboard page: plain DOM, no framework. Data comes from ./live.ts; this file only
// keeps the latest snapshot per election and draws it.
import { type CommitteeCounts, type Counts, type Id, type LinkState, type RowEvent, type Snapshot, compareIds, idOf, startLive } from './live.ts';

type Directory = { elections: Array<{ id: Id; name: string; committees?: Array<{ id: Id; name: string }> }> };
type Election = { id: Id; name: string; committeeNames: Map<Id, string>; snapshot: Snapshot | undefined; feed: RowEvent[] };

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

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
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
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(payload.length / 4) * 4, '='));
    const c = JSON.parse(json) as { role?: unknown; elections?: unknown };
    const elections = Array.isArray(c.elections) ? c.elections.flatMap((x) => idOf(String(x).replace(/^0+(?=.)/, '')) ?? []) : [];
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

const elections = new Map<Id, Election>();
let selected: Id | undefined;
const recent: number[] = []; // receive times of row events, for the changes/min figure

function electionEntry(id: Id): Election {
  let e = elections.get(id);
  if (!e) {
    e = { id, name: `Election ${id}`, committeeNames: new Map(), snapshot: undefined, feed: [] };
    elections.set(id, e);
  }
  return e;
}

// ---- drawing -------------------------------------------------------------------------------

/** Sets a counter; when it moved, flashes it and shows the difference for a moment. */
function setCount(el: HTMLElement, value: number, animate: boolean): void {
  const before = Number(el.dataset.value ?? 'NaN');
  if (before === value && el.textContent !== '') return;
  el.dataset.value = String(value);
  el.textContent = numbers.format(value);
  if (!animate || Number.isNaN(before) || before === value) return;
  const diff = value - before;
  el.classList.remove('flash-up', 'flash-down');
  void el.offsetWidth; // restart the animation
  el.classList.add(diff > 0 ? 'flash-up' : 'flash-down');
  const card = el.closest<HTMLElement>('[data-delta-host]');
  if (card) {
    const delta = h('span', { class: `delta ${diff > 0 ? 'delta-up' : 'delta-down'}` }, `${diff > 0 ? '+' : '−'}${numbers.format(Math.abs(diff))}`);
    card.querySelector('.delta')?.remove();
    card.append(delta);
    delta.addEventListener('animationend', () => delta.remove());
  }
}

function drawElectionTabs(): void {
  const nav = $('elections');
  const ids = [...elections.keys()].sort(compareIds);
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
            ...FIELDS.map((f) => h('span', { class: `mini mini-${f}`, title: LABEL[f] }, h('i', { class: `key key-${f}` }), h('b', { 'data-count': f }, '–'))),
          ),
        );
        tab.addEventListener('click', () => select(id));
        return tab;
      }),
    );
  }
  for (const tab of nav.querySelectorAll<HTMLElement>('[data-election]')) {
    const id = idOf(tab.dataset.election ?? '');
    const e = id === undefined ? undefined : elections.get(id);
    tab.setAttribute('aria-selected', String(e?.id === selected));
    if (!e?.snapshot) continue;
    for (const f of FIELDS) {
      const el = tab.querySelector<HTMLElement>(`[data-count="${f}"]`);
      if (el) setCount(el, e.snapshot.totals[f], false);
    }
  }
}

function committeeCard(e: Election, c: CommitteeCounts): HTMLElement {
  const name = e.committeeNames.get(c.committee_id) ?? `Committee ${c.committee_id}`;
  return h(
    'article',
    { class: 'committee', 'data-committee': String(c.committee_id) },
    h('header', {}, h('h4', {}, name), h('span', { class: 'committee-id' }, `#${c.committee_id}`)),
    h(
      'dl',
      {},
      ...FIELDS.map((f) =>
        h('div', { class: `cell cell-${f}`, 'data-delta-host': '' }, h('dt', {}, LABEL[f]), h('dd', { 'data-count': f, 'data-value': '' }, '')),
      ),
    ),
    h('div', { class: 'bar', title: 'attendance of guaranteed voters' }, h('span', { class: 'bar-fill' })),
  );
}

function drawSelected(animate: boolean): void {
  const e = selected === undefined ? undefined : elections.get(selected);
  if (!e) return;
  $('election-name').textContent = e.name;
  const snap = e.snapshot;
  $('election-meta').textContent = snap ? `${snap.committees.length} committees · election #${e.id}` : 'loading…';
  if (!snap) return;

  for (const f of FIELDS) {
    const el = document.querySelector<HTMLElement>(`[data-total="${f}"]`);
    if (el) setCount(el, snap.totals[f], animate);
  }
  $('turnout').textContent = turnout(snap.totals);
  const prov = $('provenance');
  prov.replaceChildren(
    `Totals from GET /dashboard/${e.id}, replaced by every live update · cursor `,
    h('code', {}, snap.cursor),
    ` · updated ${clock.format(new Date())}`,
  );

  const grid = $('committees');
  const ids = [...snap.committees].sort((a, b) => compareIds(a.committee_id, b.committee_id));
  const key = `${e.id}:${ids.map((c) => c.committee_id).join(',')}`;
  if (grid.dataset.key !== key) {
    grid.dataset.key = key;
    grid.replaceChildren(...ids.map((c) => committeeCard(e, c)));
    animate = false;
  }
  for (const c of ids) {
    const card = grid.querySelector<HTMLElement>(`[data-committee="${c.committee_id}"]`);
    if (!card) continue;
    for (const f of FIELDS) {
      const el = card.querySelector<HTMLElement>(`[data-count="${f}"]`);
      if (el) setCount(el, c[f], animate);
    }
    const share = c.guarantees > 0 ? Math.min(1, c.attendance / c.guarantees) : 0;
    card.querySelector<HTMLElement>('.bar-fill')?.style.setProperty('width', `${(share * 100).toFixed(1)}%`);
  }
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
      return { kind: 'votes', title: ev.action === 'created' ? 'Votes counted' : 'Votes recounted', detail: `${candidate} · ${numbers.format(Number(d.count ?? 0))}` };
    }
  }
}

let feedQueued = false;
function drawFeedSoon(): void {
  if (feedQueued) return;
  feedQueued = true;
  requestAnimationFrame(() => {
    feedQueued = false;
    drawFeed();
  });
}

function drawFeed(): void {
  const e = selected === undefined ? undefined : elections.get(selected);
  const list = $('feed');
  if (!e) return;
  const shown = new Set([...list.children].map((li) => (li as HTMLElement).dataset.cursor));
  list.replaceChildren(
    ...e.feed.map((ev) => {
      const { kind, title, detail } = describe(ev);
      const committee = ev.committee_id === null ? '' : (e.committeeNames.get(ev.committee_id) ?? `Committee ${ev.committee_id}`);
      const when = new Date(ev.committed_at);
      return h(
        'li',
        { class: `item item-${kind}${shown.size > 0 && !shown.has(ev.cursor) ? ' item-new' : ''}`, 'data-cursor': ev.cursor },
        h('i', { class: `key key-${kind}` }),
        h('div', { class: 'item-body' }, h('span', { class: 'item-title' }, title), h('span', { class: 'item-detail' }, detail)),
        h('div', { class: 'item-meta' }, h('time', { datetime: ev.committed_at }, Number.isNaN(when.getTime()) ? '' : clock.format(when)), h('span', {}, committee)),
      );
    }),
  );
  $('feed-count').textContent = e.feed.length ? `last ${e.feed.length} changes` : 'waiting for changes';
}

function drawRate(): void {
  const cutoff = Date.now() - 60_000;
  while (recent.length && (recent[0] ?? 0) < cutoff) recent.shift();
  $('rate').textContent = `${numbers.format(recent.length)} changes/min`;
}

const STATE_TEXT: Record<LinkState, string> = { connecting: 'Connecting', connected: 'Connected', reconnecting: 'Reconnecting', resynced: 'Resynced' };
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
  if (!elections.has(id)) return;
  selected = id;
  setFragment({ election: String(id) });
  $('empty').hidden = true;
  $('app').hidden = false;
  $('feed').replaceChildren();
  drawElectionTabs();
  drawSelected(false);
  drawFeed();
}

// ---- start ---------------------------------------------------------------------------------

const dashboardHandle = { states: [] as LinkState[] };
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
    for (const c of d.committees ?? []) e.committeeNames.set(c.id, c.name);
  }
  const fromFragment = (fragment().get('elections') ?? '').split(',').flatMap((t) => idOf(t) ?? []);
  for (const id of [...fromFragment, ...claims.elections]) electionEntry(id);
  const admin = claims.role === 'admin';

  const wanted = idOf(fragment().get('election') ?? '');
  const first = wanted !== undefined && elections.has(wanted) ? wanted : [...elections.keys()].sort(compareIds)[0];

  const live = startLive({
    origin: location.origin,
    token,
    elections: [...elections.keys()],
    discover: admin && elections.size === 0,
    onState: drawState,
    onFatal(message) {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(message);
    },
    onElection(id) {
      electionEntry(id);
      drawElectionTabs();
      if (selected === undefined) select(id);
    },
    onSnapshot(snap, source) {
      const e = electionEntry(snap.election_id);
      e.snapshot = snap;
      drawElectionTabs();
      if (snap.election_id === selected) drawSelected(source === 'update' || source === 'snapshot');
    },
    onEvent(ev) {
      if (ev.election_id === null) return;
      const e = electionEntry(ev.election_id);
      e.feed.unshift(ev);
      if (e.feed.length > FEED_SIZE) e.feed.length = FEED_SIZE;
      recent.push(Date.now());
      if (ev.election_id === selected) drawFeedSoon();
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
