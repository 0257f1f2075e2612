import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  CLOSE_CODE_MEANINGS,
  CloseCode,
  ERRORS,
  ErrorCode,
  FRAME_ERROR_CODES,
  HTTP_ERROR_CODES,
  httpError,
} from './errors.ts';
import { LABEL_VALUES } from './metrics/index.ts';

// fastify's habit: one table of error codes, every code the source sends is in it, and every
// code in it is documented.

const SRC = dirname(fileURLToPath(import.meta.url));
const ROOT = join(SRC, '..');
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const sources = (readdirSync(SRC, { recursive: true }) as string[])
  .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
  .map((f) => ({ file: `src/${f}`, text: readFileSync(join(SRC, f), 'utf8') }));
const codes = Object.keys(ERRORS);

/**
 * Every place in a source text where an error code could be written as a literal instead of
 * through `ErrorCode`: `code: '...'` / `error: '...'` properties (frames and bodies), the same
 * keys inside JSON text, and string arguments in the error helpers' code position.
 */
function literalCodes(text: string): Array<{ code: string; line: string }> {
  const found: Array<{ code: string; line: string }> = [];
  for (const line of text.split('\n')) {
    // zod issue codes and metric labels (bounded by src/metrics) are not sent as error codes.
    // (`code: 'custom'` is zod's issue code, on its own line once an addIssue call is wrapped.)
    if (/addIssue\(|\.inc\(|\bcode: 'custom'/.test(line)) continue;
    const patterns = [
      /\b(?:code|error)\s*:\s*(['"`])([^'"`]*)\1/g,
      /\\?"(?:code|error)\\?"\s*:\s*\\?"([^"\\]*)\\?"/g,
      /\b(?:httpError|fail)\(\s*(['"`])([^'"`]*)\1/g,
      /\b(?:clientError|refuse)\(\s*\w+\s*,\s*(['"`])([^'"`]*)\1/g,
    ];
    for (const p of patterns)
      for (const m of line.matchAll(p)) found.push({ code: m[2] ?? m[1] ?? '', line: line.trim() });
  }
  return found;
}

describe('one table of error codes', () => {
  it('ErrorCode names exactly the codes of the table', () => {
    expect(Object.values(ErrorCode).sort()).toEqual([...codes].sort());
    for (const [code, spec] of Object.entries(ERRORS)) {
      expect(spec.meaning.length, code).toBeGreaterThan(5);
      expect('frame' in spec || 'status' in spec, `${code} is sent somewhere`).toBe(true);
    }
    expect(new Set(HTTP_ERROR_CODES.map((c) => ERRORS[c].status)).size, 'one code per HTTP status').toBe(
      HTTP_ERROR_CODES.length,
    );
  });

  it('httpError: the table’s status and {"error","reason"?}', () => {
    expect(httpError(ErrorCode.notFound)).toEqual({ status: 404, body: '{"error":"not_found"}' });
    expect(httpError(ErrorCode.unauthorized, 'expired')).toEqual({
      status: 401,
      body: '{"error":"unauthorized","reason":"expired"}',
    });
  });

  it('the scanner sees a literal code where one could hide', () => {
    const sample = [
      `json(401, { error: 'nope' })`,
      `frame(ws, { type: 'error', code: "nah" })`,
      `res.end('{"error":"raw"}')`,
      `clientError(ws, 'lit', 'message')`,
      `fail('direct', 'origin')`,
    ].join('\n');
    expect(literalCodes(sample).map((f) => f.code)).toEqual(['nope', 'nah', 'raw', 'lit', 'direct']);
    expect(literalCodes(`clientError(ws, ErrorCode.badJson, 'frame is not JSON')`)).toEqual([]);
  });

  it('src/ sends no code outside the table, and names codes through ErrorCode, not literals', () => {
    expect(sources.length).toBeGreaterThan(20);
    const outside = sources.flatMap((s) =>
      literalCodes(s.text)
        .filter((f) => !codes.includes(f.code))
        .map((f) => `${s.file}: ${f.line}`),
    );
    expect(outside).toEqual([]);
    const literal = sources.flatMap((s) =>
      s.file === 'src/errors.ts' ? [] : literalCodes(s.text).map((f) => `${s.file}: ${f.line}`),
    );
    expect(literal).toEqual([]);
  });

  it('every code of the table is used by src/', () => {
    const text = sources
      .filter((s) => s.file !== 'src/errors.ts')
      .map((s) => s.text)
      .join('\n');
    const used = new Set(
      [...text.matchAll(/\bErrorCode\.(\w+)/g)].map((m) => ErrorCode[m[1] as keyof typeof ErrorCode]),
    );
    expect(codes.filter((c) => !used.has(c as ErrorCode))).toEqual([]);
  });

  it('the SDK reacts only to codes of the table', () => {
    const sdk = read('client/index.ts');
    const named = [...sdk.matchAll(/\.code === '([^']+)'/g)].map((m) => m[1]);
    expect(named.length).toBeGreaterThan(0);
    for (const c of named) expect(FRAME_ERROR_CODES, String(c)).toContain(c);
  });

  it('hub_client_errors_total has a series for every frame code', () => {
    for (const c of FRAME_ERROR_CODES) expect(LABEL_VALUES.errorCode, c).toContain(c);
  });
});

describe('documented', () => {
  const section = (text: string, heading: string) => {
    const start = text.indexOf(`\n${heading}\n`);
    expect(start, heading).toBeGreaterThan(0);
    const end = text.indexOf('\n## ', start + heading.length + 1);
    return text.slice(start, end < 0 ? undefined : end);
  };

  it('README.md "Error codes" has one row per code, with where it is sent', () => {
    const rows = [
      ...section(read('README.md'), '## Error codes').matchAll(
        // Cells may be padded (prettier aligns table columns).
        /^\|\s*`([a-z_]+)`\s*\|\s*(frame)?\s*\|\s*(\d{3})?\s*\|\s*(.+?)\s*\|$/gm,
      ),
    ];
    expect(rows.map((r) => r[1]).sort()).toEqual([...codes].sort());
    for (const [, code, frame, status] of rows) {
      const spec = ERRORS[code as ErrorCode] as { frame?: true; status?: number };
      expect(frame === 'frame', `${code}: frame`).toBe(spec.frame === true);
      expect(status === undefined ? undefined : Number(status), `${code}: status`).toBe(spec.status);
    }
  });

  it('docs/asyncapi.json lists every frame code with its meaning, and the HTTP codes of refused upgrades', () => {
    const doc = read('docs/asyncapi.json');
    for (const c of FRAME_ERROR_CODES) expect(doc, c).toContain(`${c}: ${ERRORS[c].meaning}`);
    for (const c of HTTP_ERROR_CODES) expect(doc, c).toContain(`${ERRORS[c].status} ${c}`);
  });

  it('every close code is documented in README.md and docs/asyncapi.json', () => {
    const readme = read('README.md');
    const asyncapi = read('docs/asyncapi.json');
    for (const code of Object.values(CloseCode)) {
      expect(CLOSE_CODE_MEANINGS[code], String(code)).toBeTruthy();
      expect(readme.match(/^Close codes:[^]*?\n\n/m)?.[0] ?? '', String(code)).toContain(String(code));
      expect(asyncapi, String(code)).toContain(`${code} ${CLOSE_CODE_MEANINGS[code]}`);
    }
  });
});
