import { afterAll, expect } from 'vitest';
import { capturedLogs } from './hub.ts';

// setupFiles: runs in every test file. Each file checks the log lines of the hubs it ran,
// so together they cover every hub log line of the whole run.
afterAll(() => {
  const leaks = capturedLogs.filter((l) => /eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/.test(l));
  expect(leaks, 'a token reached a hub log line').toEqual([]);
});
