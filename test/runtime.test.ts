// The runtime the hub accepts: Node versions (bin/node-support.mjs, package.json `engines`) and
// the native uWebSockets.js build (src/hub/uws.ts), which must never be a JS stand-in.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SUPPORTED, nodeVersionProblem } from '../bin/node-support.mjs';
import { SUPPORTED_NODE_MAJORS, uwsBuild } from '../src/hub/uws.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const SECRET = 'x'.repeat(40);

const spawnNode = (args: string[], env: Record<string, string>) =>
  spawnSync(process.execPath, args, {
    cwd: ROOT,
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    timeout: 30_000,
  });

/** Whether `version` satisfies an `engines` range of the form `>=a.b <c || >=d <e`. */
function satisfies(version: string, range: string): boolean {
  const v = version.split('.').map(Number);
  const cmp = (b: number[]) => {
    for (let i = 0; i < 3; i++) if ((v[i] ?? 0) !== (b[i] ?? 0)) return (v[i] ?? 0) - (b[i] ?? 0);
    return 0;
  };
  return range.split('||').some((part) =>
    part
      .trim()
      .split(/\s+/)
      .every((c) => {
        const m = /^(>=|<)(\d+(?:\.\d+){0,2})$/.exec(c);
        if (!m) throw new Error(`unexpected engines comparator ${c}`);
        const bound = (m[2] ?? '').split('.').map(Number);
        return m[1] === '>=' ? cmp(bound) >= 0 : cmp(bound) < 0;
      }),
  );
}

describe('Node versions', () => {
  const engines = (JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { engines: { node: string } }).engines
    .node;

  it('accepts exactly what package.json engines states, with one line naming the version otherwise', () => {
    for (const version of [
      '16.20.2',
      '18.20.4',
      '20.9.0',
      '20.10.0',
      '20.20.2',
      '21.7.3',
      '22.0.0',
      '22.11.0',
      '23.1.0',
      '24.0.0',
      '24.22.3',
      '25.2.1',
      '26.0.0',
      '27.1.0',
    ]) {
      const problem = nodeVersionProblem(version);
      expect(problem === undefined, `${version} against engines ${engines}`).toBe(satisfies(version, engines));
      if (problem) {
        expect(problem).toContain(`Node.js v${version} is not supported`);
        expect(problem).toContain('20 (>= 20.10), 22, 24, 25');
        expect(problem.split('\n')).toHaveLength(1);
      }
    }
  });

  it('the loader and the entry agree on the majors', () => {
    expect(SUPPORTED.map((s) => s.major)).toEqual([...SUPPORTED_NODE_MAJORS]);
  });
});

describe('uWebSockets.js loader', () => {
  it('uses a native binary here, and says which', () => {
    expect(uwsBuild.binary).toBe(`uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
    expect(uwsBuild.package).toMatch(/^(uWebSockets\.js|@btc-vision\/uwebsockets\.js)@\d/);
  });

  it('refuses the JS stand-in that UWS_USE_FALLBACK forces: serve exits 2 with one line before listening', () => {
    const r = spawnNode(['bin/election-hub.mjs', 'serve'], {
      DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres',
      JWT_SECRET: SECRET,
      PORT: '0',
      UWS_BUILD: 'trufflesuite',
      UWS_USE_FALLBACK: '1',
    });
    expect(r.status, r.stderr).toBe(2);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toContain(`Node ${process.version}`);
    expect(lines[0]).toMatch(/glibc \d+\.\d+|no glibc/);
    expect(lines[0]).toMatch(/would run its JS stand-in \(UWS_USE_FALLBACK is set\)/);
    expect(lines[0]).toMatch(/unset UWS_USE_FALLBACK/);
    // Nothing started: no hub log line, no banner from the package's fallback.
    expect(r.stdout).toBe('');
  });

  it('with every build allowed, a forced stand-in is still never used', () => {
    // Here the other build either loads natively (glibc >= 2.38) or fails as well (exit 2, one line).
    const r = spawnNode(
      [
        '--import',
        'tsx',
        '-e',
        "import('./src/hub/uws.ts').then((m) => console.log(JSON.stringify(m.uwsBuild)), (e) => { console.error(e.message); process.exit(2); })",
      ],
      { UWS_USE_FALLBACK: 'true' },
    );
    if (r.status === 0) {
      expect(JSON.parse(r.stdout)).toMatchObject({ id: 'btc-vision', binary: expect.stringMatching(/\.node$/) });
    } else {
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
      expect(r.stderr).toMatch(
        /uWebSockets\.js@[^ ]+ would run its JS stand-in[\s\S]*@btc-vision\/uwebsockets\.js@[^ ]+ (needs glibc|is not installed|has no binary)/,
      );
    }
  });

  it('demo is refused the same way', () => {
    const r = spawnNode(['bin/election-hub.mjs', 'demo'], {
      UWS_BUILD: 'trufflesuite',
      UWS_USE_FALLBACK: 'TRUE',
      PORT: '0',
    });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect(r.stderr).toMatch(/never runs on a JS stand-in/);
  });
});
