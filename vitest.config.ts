import { defineConfig } from 'vitest/config';

// Two projects: `unit` (src/**/*.test.ts, beside the code: pure logic, no PostgreSQL, Redis or
// network, so no services setup; `npm run test:unit`) and `integration` (test/: real services).
// `npm test` runs both.
export default defineConfig({
  test: {
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['src/**/*.test.ts'],
          // Pure code: threads start faster than processes.
          pool: 'threads',
          testTimeout: 10_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          pool: 'forks',
          // Makes sure PostgreSQL and Redis answer (starting them if need be) and provides their URLs.
          globalSetup: ['test/support/services.ts'],
          // Fails a file whose hubs logged a token (JWT) anywhere.
          setupFiles: ['test/support/no-token-in-logs.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
