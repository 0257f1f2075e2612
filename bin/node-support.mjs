// Which Node.js versions election-hub runs on, checked before anything else loads (plain
// JavaScript so that it parses on any Node). uWebSockets.js is a native addon: src/hub/uws.ts
// loads a build made for this Node's ABI and refuses to run without one. The builds exist for
// Node 20 (any glibc >= 2.27, or glibc >= 2.38) and Node 22, 24 and 25 (glibc >= 2.38); see
// README "Node versions and platforms". Keep in step with package.json `engines` and
// SUPPORTED_NODE_MAJORS in src/hub/uws.ts.

export const SUPPORTED = [
  { major: 20, minor: 10 },
  { major: 22, minor: 0 },
  { major: 24, minor: 0 },
  { major: 25, minor: 0 },
];

/** undefined when `version` (e.g. '24.1.0') is supported, else one line saying why not and what to do. */
export function nodeVersionProblem(version) {
  const [major, minor] = String(version).replace(/^v/, '').split('.').map(Number);
  const entry = SUPPORTED.find((s) => s.major === major);
  if (entry && minor >= entry.minor) return undefined;
  const list = SUPPORTED.map((s) => (s.minor ? `${s.major} (>= ${s.major}.${s.minor})` : String(s.major))).join(', ');
  return (
    `election-hub: Node.js v${String(version).replace(/^v/, '')} is not supported: uWebSockets.js has native builds for Node ${list} only; ` +
    'install one of those (Node 22/24/25 also need glibc >= 2.38, e.g. Debian 13 or Ubuntu 24.04), or run the container image'
  );
}
