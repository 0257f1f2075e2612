// Which metric names do the operations files (Grafana dashboards, Prometheus alert rules) rely on?
// A renamed metric makes a panel go blank or an alert go silent without any error, so the tests
// compare these names against the names the hub really exports (see test/ops-metrics.test.ts).
//
// No PromQL or YAML library: a small tokenizer that knows which identifiers are *not* metric names
// (functions, aggregation operators and their label lists, keywords, label matchers, strings,
// durations, Grafana variables) is enough, and alerts.yml keeps every `expr:` on one line.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Series Prometheus itself adds to every scrape target; a hub never exports them. */
export const PROMETHEUS_SYNTHETIC_METRICS: ReadonlySet<string> = new Set([
  'up',
  'scrape_duration_seconds',
  'scrape_samples_scraped',
  'scrape_samples_post_metric_relabeling',
  'scrape_series_added',
]);

// Aggregation operators, binary set/comparison keywords and modifiers. PromQL treats these
// case-insensitively (`SUM BY (le)` is valid), unlike function and metric names.
const KEYWORDS = new Set([
  'sum',
  'min',
  'max',
  'avg',
  'group',
  'stddev',
  'stdvar',
  'count',
  'count_values',
  'bottomk',
  'topk',
  'quantile',
  'limitk',
  'limit_ratio',
  'and',
  'or',
  'unless',
  'atan2',
  'bool',
  'offset',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
]);
// Keywords whose following parenthesised list holds label names, not expressions.
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const NUMBER_WORDS = new Set(['inf', 'nan']);

const IDENT_START = /[A-Za-z_:]/;
const IDENT_PART = /[A-Za-z0-9_:]/;
const METRIC_NAME = /^[A-Za-z_:][A-Za-z0-9_:]*/;

/** Index just past the quoted string starting at `start` (`"`, `'` with escapes; `` ` `` raw). */
function skipString(s: string, start: number): number {
  const quote = s[start];
  let i = start + 1;
  while (i < s.length && s[i] !== quote) i += quote !== '`' && s[i] === '\\' ? 2 : 1;
  return i + 1;
}

/** Index just past the bracket that closes the one at `start`, skipping strings inside. */
function skipBalanced(s: string, start: number, open: string, close: string): number {
  let depth = 0;
  let i = start;
  while (i < s.length) {
    const c = s[i];
    if (c === '"' || c === "'" || c === '`') {
      i = skipString(s, i);
      continue;
    }
    if (c === open) depth++;
    else if (c === close && --depth === 0) return i + 1;
    i++;
  }
  return i;
}

function unquote(literal: string): string {
  const quote = literal[0];
  const body = literal.slice(1, -1);
  return quote === '`' ? body : body.replace(/\\(.)/g, '$1');
}

/** `{__name__="x", job=~"y"}`: the exact `__name__` value names a metric; everything else is labels. */
function metricNamesInMatchers(block: string): string[] {
  const found: string[] = [];
  const re = /([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)/g;
  for (const m of block.matchAll(re)) {
    if (m[1] === '__name__' && m[2] === '=' && m[3] !== undefined) found.push(unquote(m[3]));
  }
  return found;
}

function nextSignificant(s: string, from: number): { char: string | undefined; index: number } {
  let i = from;
  for (;;) {
    while (i < s.length && /\s/.test(s[i] ?? '')) i++;
    if (s[i] === '#') {
      while (i < s.length && s[i] !== '\n') i++;
      continue;
    }
    return { char: s[i], index: i };
  }
}

/**
 * Metric names referenced by one PromQL expression (Grafana variables such as `$instance` or
 * `$__rate_interval` allowed), unique and sorted. Histogram series keep their suffix
 * (`x_bucket`), as written.
 */
export function extractMetricNames(expr: string): string[] {
  const names = new Set<string>();
  const s = expr;
  let i = 0;
  while (i < s.length) {
    const c = s[i] ?? '';
    if (c === '#') {
      while (i < s.length && s[i] !== '\n') i++;
    } else if (c === '"' || c === "'" || c === '`') {
      i = skipString(s, i);
    } else if (c === '{') {
      const end = skipBalanced(s, i, '{', '}');
      for (const n of metricNamesInMatchers(s.slice(i, end))) names.add(n);
      i = end;
    } else if (c === '[') {
      // Range or subquery duration (`[5m]`, `[1h:30s]`, `[$__rate_interval]`, legacy `[[var]]`).
      i = skipBalanced(s, i, '[', ']');
    } else if (c === '$') {
      // Grafana variable: `${name}`/`${name:fmt}` or `$name`.
      if (s[i + 1] === '{') i = skipBalanced(s, i + 1, '{', '}');
      else {
        i++;
        while (i < s.length && IDENT_PART.test(s[i] ?? '')) i++;
      }
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(s[i + 1] ?? ''))) {
      // Number, hex or duration (`0.99`, `1e-3`, `0x1f`, `5m`, `1h30m`): letters belong to it.
      const start = i;
      const hex = /^0x/i.test(s.slice(i, i + 2));
      i++;
      while (i < s.length) {
        const d = s[i] ?? '';
        if (/[A-Za-z0-9_.]/.test(d)) i++;
        else if ((d === '+' || d === '-') && !hex && /[eE]/.test(s[i - 1] ?? '') && i - 1 > start) i++;
        else break;
      }
    } else if (IDENT_START.test(c)) {
      const start = i;
      while (i < s.length && IDENT_PART.test(s[i] ?? '')) i++;
      const word = s.slice(start, i);
      const lower = word.toLowerCase();
      const next = nextSignificant(s, i);
      if (LABEL_LIST_KEYWORDS.has(lower) && next.char === '(') {
        i = skipBalanced(s, next.index, '(', ')');
      } else if (KEYWORDS.has(lower) || NUMBER_WORDS.has(lower)) {
        // operator or literal: nothing to record
      } else if (next.char === '(') {
        // function call (`rate(`, `histogram_quantile (`): its arguments are scanned as usual
      } else {
        names.add(word);
      }
    } else {
      i++;
    }
  }
  return [...names].sort();
}

/** Every string under an `expr` key anywhere in a Grafana dashboard (rows, nested panels included). */
export function exprsInDashboard(dashboard: unknown): string[] {
  const out: string[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) for (const item of node) walk(item);
    else if (node !== null && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if (key === 'expr' && typeof value === 'string') out.push(value);
        else walk(value);
      }
    }
  };
  walk(dashboard);
  return out;
}

/**
 * The `expr:` values of a Prometheus rules file. Handles plain, single- and double-quoted scalars
 * and `|`/`>` block scalars; alerts.yml uses plain one-line expressions.
 */
export function exprsInRulesYaml(text: string): string[] {
  const lines = text.split(/\r?\n/);
  const out: string[] = [];
  for (let n = 0; n < lines.length; n++) {
    const m = /^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$/.exec(lines[n] ?? '');
    if (!m) continue;
    const indent = (m[1] ?? '').length;
    const value = m[2] ?? '';
    if (/^[|>][+-]?$/.test(value)) {
      const block: string[] = [];
      while (n + 1 < lines.length) {
        const line = lines[n + 1] ?? '';
        if (line.trim() !== '' && line.length - line.trimStart().length <= indent) break;
        block.push(line.trim());
        n++;
      }
      out.push(block.join(value.startsWith('>') ? ' ' : '\n').trim());
    } else if (value.startsWith('"')) {
      out.push(JSON.parse(value.replace(/\s+#.*$/, '')) as string);
    } else if (value.startsWith("'")) {
      out.push(
        value
          .replace(/\s+#.*$/, '')
          .slice(1, -1)
          .replace(/''/g, "'"),
      );
    } else {
      out.push(value.replace(/\s+#.*$/, ''));
    }
  }
  return out;
}

/**
 * Metric names each operations file relies on: every dashboard in `grafana/dashboards/*.json` and
 * `prometheus/alerts.yml`. `file` is relative to `root`.
 */
export function metricNamesUsedByOps(root: string): { file: string; names: string[] }[] {
  const result: { file: string; names: string[] }[] = [];
  const collect = (file: string, exprs: string[]): void => {
    const names = new Set<string>();
    for (const expr of exprs) for (const name of extractMetricNames(expr)) names.add(name);
    result.push({ file, names: [...names].sort() });
  };
  const dashboards = readdirSync(join(root, 'grafana', 'dashboards'))
    .filter((f) => f.endsWith('.json'))
    .sort();
  for (const f of dashboards) {
    const file = `grafana/dashboards/${f}`;
    collect(file, exprsInDashboard(JSON.parse(readFileSync(join(root, file), 'utf8'))));
  }
  const rules = 'prometheus/alerts.yml';
  collect(rules, exprsInRulesYaml(readFileSync(join(root, rules), 'utf8')));
  return result;
}

/**
 * Names present in a Prometheus text exposition: every sample's series name, plus each `# TYPE`
 * family and, for histograms and summaries, its `_bucket`/`_sum`/`_count` series. prom-client
 * prints no sample for a labelled metric that has not been touched yet, so the `# TYPE` line is
 * what proves such a metric is registered.
 */
export function namesInExposition(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line);
    if (type) {
      const family = type[1] ?? '';
      const kind = type[2];
      names.add(family);
      if (kind === 'histogram') for (const sfx of ['_bucket', '_sum', '_count']) names.add(family + sfx);
      if (kind === 'summary') for (const sfx of ['_sum', '_count']) names.add(family + sfx);
      continue;
    }
    if (line.startsWith('#') || line.trim() === '') continue;
    const sample = METRIC_NAME.exec(line.trimStart());
    if (sample) names.add(sample[0]);
  }
  return names;
}
