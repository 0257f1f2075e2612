import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
    // Makes sure PostgreSQL and Redis answer (starting them if need be) and provides their URLs.
    globalSetup: ['test/support/services.ts'],
    // Fails a file whose hubs logged a token (JWT) anywhere.
    setupFiles: ['test/support/no-token-in-logs.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
