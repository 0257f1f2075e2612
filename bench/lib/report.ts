/** One line of the results table: a figure, its same-run baseline, their ratio and the target. */
export type Row = {
  scenario: string;
  case: string;
  figure: string;
  value: number;
  baseline: string;
  baselineValue: number;
  ratio: number;
  ratioText: string;
  target: string;
  status: 'PASS' | 'MISS' | 'info';
};

const COLUMNS: Array<[keyof Row, string]> = [
  ['scenario', 'scenario'],
  ['case', 'case'],
  ['figure', 'figure'],
  ['baseline', 'baseline (same run)'],
  ['ratioText', 'ratio'],
  ['target', 'target'],
  ['status', 'result'],
];

/** A plain-text table, columns separated by ` | ` (the smoke test reads it back). */
export function renderTable(rows: readonly Row[]): string {
  const cells = rows.map((r) => COLUMNS.map(([k]) => String(r[k])));
  const head = COLUMNS.map(([, h]) => h);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: string[]) =>
    c
      .map((x, i) => x.padEnd(widths[i] ?? 0))
      .join(' | ')
      .trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('-|-'), ...cells.map(line)].join('\n');
}

/** The same table as Markdown, for docs/BENCHMARKS.md. */
export function renderMarkdown(rows: readonly Row[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${COLUMNS.map(([, h]) => h).join(' | ')} |`,
    `|${COLUMNS.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${COLUMNS.map(([k]) => esc(String(r[k]))).join(' | ')} |`),
  ].join('\n');
}
