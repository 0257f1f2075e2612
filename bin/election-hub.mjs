#!/usr/bin/env node
// The hub is written in TypeScript and run through tsx's loader, so a clone works
// without a build step (uWebSockets.js pins Node 20, which cannot strip types itself).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli.ts');
process.exitCode = await main(process.argv.slice(2));
