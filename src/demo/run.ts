import type { Env } from '../config/index.ts';
/** Placeholder until the demo lands (issue 5). */
export async function runDemo(_env: Env): Promise<number> {
  console.error('demo: not built yet');
  return 1;
}
