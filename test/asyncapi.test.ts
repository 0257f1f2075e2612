import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ASYNCAPI_PATH, generateAsyncApi, renderAsyncApi } from '../scripts/asyncapi.ts';
import { ClientFrame, ControlFrame, RowEventType } from '../src/events/schema.ts';

type Schema = { title?: string; type?: string; properties?: Record<string, { const?: unknown; enum?: unknown[] }> };
type Doc = {
  asyncapi: string;
  channels: Record<string, { address: string; messages: Record<string, { $ref: string }> }>;
  operations: Record<
    string,
    { action: string; messages: Array<{ $ref: string }>; reply?: { messages: Array<{ $ref: string }> } }
  >;
  components: {
    schemas: Record<string, Schema>;
    messages: Record<string, { payload?: { $ref?: string } }>;
    securitySchemes: Record<string, { type: string; in?: string; name?: string }>;
  };
  servers: Record<string, { security: Array<{ $ref: string }> }>;
};

/** A message's payload schema: every payload is a named schema under components.schemas. */
const payloadOf = (doc: Doc, message: string): Schema | undefined => {
  const ref = doc.components.messages[message]?.payload?.$ref ?? '';
  expect(ref, message).toMatch(/^#\/components\/schemas\/[A-Z][A-Za-z]+$/);
  return doc.components.schemas[ref.split('/').at(-1) ?? ''];
};

describe('docs/asyncapi.json', () => {
  it('is up to date with src/events/schema.ts (run `node bin/run-ts.mjs scripts/asyncapi.ts` if this fails)', () => {
    expect(readFileSync(ASYNCAPI_PATH, 'utf8')).toBe(renderAsyncApi());
  });

  it('is AsyncAPI 3.0.0 JSON in which every message has a payload schema', () => {
    const doc = JSON.parse(readFileSync(ASYNCAPI_PATH, 'utf8')) as Doc;
    expect(doc.asyncapi).toBe('3.0.0');
    expect(doc.channels.ws?.address).toBe('/ws');
    const messages = Object.entries(doc.components.messages);
    expect(messages.length).toBeGreaterThan(0);
    for (const [name] of messages) {
      const payload = payloadOf(doc, name);
      expect(payload, name).toBeTypeOf('object');
      expect(payload?.type, name).toBe('object');
      expect(payload?.properties?.type, name).toBeDefined();
    }
    // Every schema is named (code generators name their models after it).
    for (const [id, schema] of Object.entries(doc.components.schemas)) expect(schema.title, id).toBe(id);
  });

  it('describes every frame type of the protocol, in both directions', () => {
    const doc = generateAsyncApi() as unknown as Doc;
    const names = Object.keys(doc.components.messages);
    const client = ClientFrame.options.map((o) => o.shape.type.value);
    const control = ControlFrame.options.map((o) => o.shape.type.value);
    expect(names.sort()).toEqual([...client, ...control, ...RowEventType.options, 'app_event'].sort());
    // Each message's `type` is pinned to its name (application events excepted: their type is free).
    for (const name of names.filter((n) => n !== 'app_event')) {
      expect(payloadOf(doc, name)?.properties?.type?.const, name).toBe(name);
    }
    // The channel lists every message; every operation's message is one of the channel's.
    expect(Object.keys(doc.channels.ws?.messages ?? {}).sort()).toEqual([...names].sort());
    for (const [id, op] of Object.entries(doc.operations)) {
      for (const ref of [...op.messages, ...(op.reply?.messages ?? [])]) {
        expect(ref.$ref, id).toMatch(/^#\/channels\/ws\/messages\//);
        expect(names, id).toContain(ref.$ref.split('/').at(-1));
      }
    }
    const received = Object.values(doc.operations)
      .filter((o) => o.action === 'receive')
      .flatMap((o) => o.messages.map((m) => m.$ref.split('/').at(-1)));
    expect(received.sort()).toEqual([...client].sort());
  });

  it('documents the three ways to pass the JWT', () => {
    const doc = generateAsyncApi() as unknown as Doc;
    const schemes = doc.components.securitySchemes;
    expect(schemes.queryToken).toMatchObject({ type: 'httpApiKey', in: 'query', name: 'token' });
    expect(schemes.bearer).toMatchObject({ type: 'http' });
    expect(schemes.subprotocol).toMatchObject({ type: 'httpApiKey', in: 'header', name: 'Sec-WebSocket-Protocol' });
    expect(doc.servers.hub?.security.map((s) => s.$ref.split('/').at(-1))).toEqual([
      'queryToken',
      'bearer',
      'subprotocol',
    ]);
  });

  it('the generator is deterministic', () => {
    expect(renderAsyncApi()).toBe(renderAsyncApi());
  });
});
