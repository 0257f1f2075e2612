// A real crash of PostgreSQL against keys committed without the flush (sql/012): bench/crash.ts
// kills a backend of a private embedded cluster right after hub.sequence() handed out a key, and
// checks after recovery that every handed-out key either survived or lies in a lost range the
// next call recorded (and that the write was keyed again after it).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('a crash of PostgreSQL after keys were handed out without the flush', () => {
  it('empties hub.sequencer_run, and the next call records a lost range holding every key that did not survive; a clean restart records none', () => {
    const r = spawnSync(process.execPath, ['bin/run-ts.mjs', 'bench/crash.ts', '--rounds', '2'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 170_000,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.status, out).toBe(0);
    const rounds = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{"round"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(rounds).toHaveLength(2);
    for (const round of rounds) {
      expect(round.sequencerRunRows, out).toBe(0);
      expect(round.lostRange, out).not.toBeNull();
      expect(round.keyAfterRecovery === null ? round.handedOutKeyInLostRange : true, out).toBe(true);
    }
    expect(r.stdout).toMatch(/lies in a recorded lost range: yes/);
    // A clean restart flushes everything first: the key stays and nothing is recorded lost.
    expect(r.stdout).toMatch(/a clean restart: the key kept, nothing recorded lost: yes/);
  }, 180_000);
});
