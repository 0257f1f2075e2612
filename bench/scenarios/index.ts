/*
 * The scenarios, in the order they run (and their rows print). Adding one: a file here that
 * exports a `Scenario` (see bench/harness.ts), and one line below. Keep write-cost last: its
 * hundreds of thousands of rows would otherwise sit in every later scenario's tables.
 */
import type { Scenario } from '../harness.ts';
import { electionNight } from './election-night.ts';
import { fanOut } from './fan-out.ts';
import { heldOpen } from './held-open.ts';
import { latency } from './latency.ts';
import { memory } from './memory.ts';
import { writeCost } from './write-cost.ts';

export const SCENARIOS: readonly Scenario[] = [
  latency,
  fanOut,
  memory,
  electionNight,
  heldOpen,
  writeCost, // last
];
