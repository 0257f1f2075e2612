// Checks the import graph of src/ (production files; *.test.ts excluded): no cycle between its
// top-level folders (a file directly in src/, such as main.ts, counts as a folder of its own), and
// the boundaries below. Every import counts, `import type` and dynamic `import()` included: a type
// import couples two folders as much as any other.
//   node bin/run-ts.mjs scripts/check-imports.ts      (part of `npm run check`)
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const SRC = path.join(ROOT, 'src');

/** Imports a folder must not make: another folder of src/ or a package. */
const FORBIDDEN: Array<{ from: string; to: string; why: string }> = [
  { from: 'hub', to: 'db', why: 'delivery reaches the outbox through History and the reader through PositionSource' },
  { from: 'hub', to: 'pg', why: 'the database stays behind src/db' },
  { from: 'hub', to: 'pg-listen', why: 'the database stays behind src/db' },
  { from: 'http', to: 'hub', why: 'the route handlers are plain functions; src/hub wires them to uWS' },
];
/** Packages only one folder may import. */
const ONLY_IN: Record<string, string> = { 'uWebSockets.js': 'hub' };

const files = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory()
      ? files(path.join(dir, d.name))
      : /\.ts$/.test(d.name) && !/\.test\.ts$/.test(d.name)
        ? [path.join(dir, d.name)]
        : [],
  );

/** `hub` for src/hub/server.ts, `main.ts` for src/main.ts. */
const folderOf = (file: string) => path.relative(SRC, file).split(path.sep)[0] as string;
/** `pg` for 'pg', `@scope/name` for '@scope/name/sub'. */
const packageOf = (spec: string) =>
  spec
    .split('/')
    .slice(0, spec.startsWith('@') ? 2 : 1)
    .join('/');

const problems: string[] = [];
const edges = new Map<string, Map<string, string>>(); // folder -> folder -> one example "file -> file"
const all = files(SRC);
for (const file of all) {
  const from = folderOf(file);
  const rel = path.relative(ROOT, file);
  for (const { fileName: spec } of ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles) {
    if (spec.startsWith('.')) {
      const target = path.resolve(path.dirname(file), spec);
      if (!target.startsWith(SRC + path.sep)) continue;
      const to = folderOf(target);
      const bad = FORBIDDEN.find((f) => f.from === from && f.to === to);
      if (bad)
        problems.push(
          `${rel} imports ${path.relative(ROOT, target)}: src/${from} must not import src/${to} (${bad.why})`,
        );
      if (to === from) continue;
      let out = edges.get(from);
      if (!out) edges.set(from, (out = new Map()));
      if (!out.has(to)) out.set(to, `${rel} -> ${path.relative(ROOT, target)}`);
    } else {
      const pkg = packageOf(spec.replace(/^node:/, ''));
      const bad = FORBIDDEN.find((f) => f.from === from && f.to === pkg);
      if (bad) problems.push(`${rel} imports ${spec}: src/${from} must not import ${pkg} (${bad.why})`);
      const only = ONLY_IN[pkg];
      if (only !== undefined && only !== from) problems.push(`${rel} imports ${spec}: only src/${only} may`);
    }
  }
}

// Tarjan's strongly connected components: any component of more than one folder is a cycle.
let index = 0;
const stack: string[] = [];
const state = new Map<string, { index: number; low: number; onStack: boolean }>();
const visit = (v: string) => {
  const sv = { index, low: index, onStack: true };
  index++;
  state.set(v, sv);
  stack.push(v);
  for (const w of edges.get(v)?.keys() ?? []) {
    const sw = state.get(w);
    if (!sw) {
      visit(w);
      sv.low = Math.min(sv.low, (state.get(w) as typeof sv).low);
    } else if (sw.onStack) sv.low = Math.min(sv.low, sw.index);
  }
  if (sv.low !== sv.index) return;
  const component: string[] = [];
  for (;;) {
    const w = stack.pop() as string;
    (state.get(w) as typeof sv).onStack = false;
    component.push(w);
    if (w === v) break;
  }
  if (component.length < 2) return;
  const inCycle = new Set(component);
  const why = component.flatMap((a) =>
    [...(edges.get(a) ?? [])].filter(([b]) => inCycle.has(b)).map(([, example]) => `    ${example}`),
  );
  problems.push(`import cycle between src/ folders ${component.sort().join(', ')}:\n${why.join('\n')}`);
};
for (const v of [...new Set(all.map(folderOf))].sort()) if (!state.has(v)) visit(v);

if (problems.length > 0) {
  console.error(`check-imports: ${problems.length} problem(s)\n${problems.map((p) => `  ${p}`).join('\n')}`);
  process.exit(1);
}
const edgeCount = [...edges.values()].reduce((n, m) => n + m.size, 0);
console.log(
  `check-imports: ${all.length} files in src/, ${edgeCount} edges between ${state.size} folders: no cycle, boundaries hold`,
);
