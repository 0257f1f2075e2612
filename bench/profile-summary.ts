/*
 * `node bin/run-ts.mjs bench/profile-summary.ts FILE.cpuprofile [N]`: the top N functions of a
 * V8 CPU profile (from `npm run bench -- --profile`, which runs the hub with --cpu-prof) by
 * self time and by inclusive time, with their source location — to say where a figure is lost.
 */
import { readFileSync } from 'node:fs';

type Node = {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
};
type Profile = { nodes: Node[]; startTime: number; endTime: number; samples?: number[]; timeDeltas?: number[] };

const [file, n = '25'] = process.argv.slice(2);
if (!file) {
  console.error('usage: profile-summary.ts FILE.cpuprofile [N]');
  process.exit(2);
}
const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(p.nodes.map((x) => [x.id, x]));
const parent = new Map<number, number>();
for (const x of p.nodes) for (const c of x.children ?? []) parent.set(c, x.id);

// Time per sample from timeDeltas (µs).
const selfUs = new Map<number, number>();
const samples = p.samples ?? [];
const deltas = p.timeDeltas ?? [];
for (let i = 0; i < samples.length; i++) {
  const id = samples[i] as number;
  selfUs.set(id, (selfUs.get(id) ?? 0) + (deltas[i + 1] ?? deltas[i] ?? 0));
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const key = (x: Node) => {
  const f = x.callFrame;
  const where = f.url ? `${f.url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, '$1/')}:${f.lineNumber + 1}` : '';
  return `${f.functionName || '(anonymous)'} ${where}`.trim();
};
const self = new Map<string, number>();
const incl = new Map<string, number>();
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) continue;
  self.set(key(node), (self.get(key(node)) ?? 0) + us);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const k = key(byId.get(cur) as Node);
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + us);
  }
}
const top = (m: Map<string, number>) =>
  [...m.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, Number(n))
    .map(([k, us]) => `${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`)
    .join('\n');
console.log(
  `profile ${file}: ${(total / 1e6).toFixed(2)} s sampled over ${((p.endTime - p.startTime) / 1e6).toFixed(2)} s\n`,
);
console.log(`-- self time\n${top(self)}\n\n-- inclusive time\n${top(incl)}`);
