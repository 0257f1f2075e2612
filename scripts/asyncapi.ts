/**
 * Generates docs/asyncapi.json (AsyncAPI 3.0) from the protocol's zod schemas in
 * src/events/schema.ts, so the document cannot drift from what the hub validates and sends.
 *
 *   node bin/run-ts.mjs scripts/asyncapi.ts           writes docs/asyncapi.json
 *   node bin/run-ts.mjs scripts/asyncapi.ts --check   exits 1 if the committed file is stale
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import {
  Action,
  AppEvent,
  ClientFrame,
  CommitteeCounts,
  ControlFrame,
  Counts,
  RowEvent,
  RowEventType,
} from '../src/events/schema.ts';
import { CLOSE_CODE_MEANINGS, ERRORS, FRAME_ERROR_CODES, HTTP_ERROR_CODES } from '../src/errors.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const ASYNCAPI_PATH = resolve(ROOT, 'docs/asyncapi.json');

type Json = Record<string, unknown>;

/** What each message means (the schemas carry the shapes; this carries the behaviour). */
const SUMMARY: Record<string, string> = {
  ping: 'Heartbeat; answered with `pong`.',
  subscribe:
    'Adds topics. With `since`, every event on those topics after that cursor is replayed first, in order, then live ones follow; `subscribed` marks the seam.',
  unsubscribe: 'Removes topics; answered with `unsubscribed`.',
  connection_success:
    'First frame on every connection: the token subject, the auto-subscribed topics (none with `?subscribe=none`) and the current cursor.',
  subscribed:
    'Answer to `subscribe`, sent after any replayed events; live events follow. `cursor` is a position the client may resume from.',
  unsubscribed: 'Answer to `unsubscribe`.',
  resync:
    '`since` is older than the outbox keeps: the topics are subscribed live, events in between are lost; take a fresh snapshot (GET /dashboard/{id}).',
  pong: 'Answer to `ping`.',
  error: `An error answer; the connection stays open unless the client keeps misbehaving (then 1008). Codes (src/errors.ts): ${FRAME_ERROR_CODES.map((c) => `${c}: ${ERRORS[c].meaning}`).join('; ')}.`,
  dashboard_update:
    "An election's totals, at most one per election per DASHBOARD_DEBOUNCE, on election:{id} and dashboard:{id} (not on election:* alone). `base` null: the full state (every committee; the first update after any subscribe, resubscribe or resume, and after a recomputation); else only the committees changed since `base`, the cursor of the previous update on this connection. Apply it if `base` is null (replace) or equals the cursor of the last update applied (overwrite the listed committees); anything else is a broken chain: fetch GET /dashboard/{id} again. Totals are absolute.",
  guarantee_update: 'A captured change of a `guarantees` row.',
  attendance_update: 'A captured change of an `attendance` row.',
  voting_update: 'A captured change of a `votes` row.',
  app_event:
    "An application event from `hub.publish(topic, type, payload)`; `type` is the application's own. Delivered in the same global order as row events.",
};

const literalType = (schema: z.ZodObject): string => {
  const t = schema.shape.type;
  if (!(t instanceof z.ZodLiteral) || typeof t.value !== 'string')
    throw new Error('a protocol frame must have a literal `type`');
  return t.value;
};

/** `guarantee_update` -> `GuaranteeUpdate`: the model name code generators (modelina) use. */
const pascal = (s: string) => s.replace(/(^|_)([a-z0-9])/g, (_m, _u: string, c: string) => c.toUpperCase());

/**
 * Schema (model) names: client frames `<Type>Frame` (`SubscribeFrame`), server frames `<Type>`
 * (`GuaranteeUpdate`), except `error`, whose model would shadow the language's own `Error`.
 */
const clientSchemaName = (type: string) => `${pascal(type)}Frame`;
const serverSchemaName = (type: string) => (type === 'error' ? 'ErrorFrame' : pascal(type));

/**
 * JSON Schemas (draft-07, the AsyncAPI default schema format) of named zod schemas, as
 * `components.schemas`: every payload and every nested object or enum gets its own named schema
 * with a `title`, and payloads refer to shared parts with `$ref`, so generated models
 * (modelina: TypeScript, Python, ...) are named and reused instead of `AnonymousSchema_51`.
 */
function componentSchemas(named: Array<[string, z.ZodType]>, io: 'input' | 'output'): Record<string, Json> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of named) registry.add(schema, { id });
  const out = z.toJSONSchema(registry, {
    target: 'draft-07',
    io,
    unrepresentable: 'any',
    uri: (id) => `#/components/schemas/${id}`,
  }) as { schemas: Record<string, Json> };
  const schemas: Record<string, Json> = {};
  for (const [id, schema] of Object.entries(out.schemas)) {
    delete schema.$schema;
    delete schema.$id;
    schemas[id] = { title: id, ...schema };
  }
  return schemas;
}

/** The AsyncAPI document, from the hub's point of view (it receives client frames and sends the rest). */
export function generateAsyncApi(): Json {
  const pkg = JSON.parse(readFileSync(resolve(ROOT, 'package.json'), 'utf8')) as {
    name: string;
    version: string;
    description?: string;
  };
  const messages: Record<string, Json> = {};
  const add = (name: string, title: string, schema: string) => {
    messages[name] = {
      name,
      title,
      summary: SUMMARY[name] ?? title,
      contentType: 'application/json',
      payload: { $ref: `#/components/schemas/${schema}` },
    };
  };

  const clientNames: string[] = [];
  const clientSchemas: Array<[string, z.ZodType]> = [];
  for (const frame of ClientFrame.options) {
    const type = literalType(frame);
    clientNames.push(type);
    const id = clientSchemaName(type);
    // The hub ignores unknown keys; documented closed so generated models carry no catch-all field.
    clientSchemas.push([id, frame.strict()]);
    add(type, `${type} (client → hub)`, id);
  }
  const serverNames: string[] = [];
  // Shared parts first: payloads refer to them by name.
  const serverSchemas: Array<[string, z.ZodType]> = [
    ['RowAction', Action],
    ['Counts', Counts],
    ['CommitteeCounts', CommitteeCounts],
  ];
  for (const frame of ControlFrame.options) {
    const type = literalType(frame);
    serverNames.push(type);
    serverSchemas.push([serverSchemaName(type), frame]);
    add(type, `${type} (hub → client)`, serverSchemaName(type));
  }
  for (const type of RowEventType.options) {
    serverNames.push(type);
    serverSchemas.push([serverSchemaName(type), RowEvent.extend({ type: z.literal(type) })]);
    add(type, `${type} (hub → client)`, serverSchemaName(type));
  }
  serverNames.push('app_event');
  serverSchemas.push(['AppEvent', AppEvent]);
  add('app_event', 'application event (hub → client)', 'AppEvent');
  const schemas = { ...componentSchemas(clientSchemas, 'input'), ...componentSchemas(serverSchemas, 'output') };

  const ref = (name: string) => ({ $ref: `#/channels/ws/messages/${name}` });
  const replyTo: Record<string, string> = { ping: 'pong', subscribe: 'subscribed', unsubscribe: 'unsubscribed' };
  const operations: Record<string, Json> = {};
  for (const name of clientNames) {
    const reply = replyTo[name];
    operations[`receive_${name}`] = {
      action: 'receive',
      channel: { $ref: '#/channels/ws' },
      summary: SUMMARY[name],
      messages: [ref(name)],
      ...(reply
        ? {
            reply: {
              channel: { $ref: '#/channels/ws' },
              messages: reply === 'subscribed' ? [ref('subscribed'), ref('resync'), ref('error')] : [ref(reply)],
            },
          }
        : {}),
    };
  }
  operations.send_frames = {
    action: 'send',
    channel: { $ref: '#/channels/ws' },
    summary:
      'Everything the hub sends: control frames, dashboard updates and events (per connection, in one global cursor order, each at most once).',
    messages: serverNames.filter((n) => !['pong', 'subscribed', 'unsubscribed'].includes(n)).map(ref),
  };

  return {
    asyncapi: '3.0.0',
    info: {
      title: pkg.name,
      version: pkg.version,
      description: [
        pkg.description ?? '',
        '',
        'Generated from src/events/schema.ts by scripts/asyncapi.ts; do not edit by hand.',
        '',
        `Close codes: ${Object.entries(CLOSE_CODE_MEANINGS)
          .map(([code, meaning]) => `${code} ${meaning}`)
          .join('; ')}.`,
        'A replay that cannot be completed closes with 4009 instead of going live over a gap. An error answer to a resume (other than bad_cursor) also means: reconnect and resume (the SDK does).',
        'The upgrade is refused with 401 (missing/invalid/expired token, or a token without exp), 403 (Origin not allowed), 429 (too many connections for this sub) or 503 (not ready, shutting down, node full),',
        `with an HTTP error body {"error":code,"reason"?:...} (src/errors.ts): ${HTTP_ERROR_CODES.map((c) => `${ERRORS[c].status} ${c}`).join(', ')}.`,
        'Cursors are opaque strings; a client resumes with `subscribe {topics, since: <last cursor>}` on a connection opened with `?subscribe=none`.',
      ].join('\n'),
    },
    defaultContentType: 'application/json',
    servers: {
      hub: {
        host: 'localhost:8080',
        protocol: 'ws',
        description:
          'An election-hub node (wss behind TLS termination). permessage-deflate is negotiated when the client offers it (WS_COMPRESSION, default shared: no context between frames); frames of at least WS_COMPRESSION_MIN_BYTES (1024) are compressed, smaller ones sent as they are.',
        security: [
          { $ref: '#/components/securitySchemes/queryToken' },
          { $ref: '#/components/securitySchemes/bearer' },
          { $ref: '#/components/securitySchemes/subprotocol' },
        ],
      },
    },
    channels: {
      ws: {
        address: '/ws',
        title: 'WebSocket',
        description:
          "Topics: election:* (admin), election:{id}, committee:{id}, dashboard:{id} (only that election's dashboard_update frames; allowed wherever election:{id} is), user:{sub}. An event of committee C in election E is on committee:C, election:E and election:*; a connection gets it once, and each dashboard_update once. On open the hub subscribes what the token claims name unless `?subscribe=none`.",
        messages: Object.fromEntries(Object.keys(messages).map((n) => [n, { $ref: `#/components/messages/${n}` }])),
        bindings: {
          ws: {
            method: 'GET',
            query: {
              type: 'object',
              properties: {
                token: { type: 'string', description: 'The JWT (one of three ways to pass it).' },
                subscribe: {
                  type: 'string',
                  enum: ['none'],
                  description: 'Do not auto-subscribe the claimed topics (resuming clients).',
                },
              },
            },
            bindingVersion: '0.1.0',
          },
        },
      },
    },
    operations,
    components: {
      schemas,
      messages,
      securitySchemes: {
        queryToken: {
          type: 'httpApiKey',
          name: 'token',
          in: 'query',
          description:
            'JWT in `?token=` (HS256, RS256, ES256 or EdDSA as configured). Claims: sub, role, elections, committees.',
        },
        bearer: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description: '`Authorization: Bearer <jwt>` on the upgrade request (not available to browsers).',
        },
        subprotocol: {
          type: 'httpApiKey',
          name: 'Sec-WebSocket-Protocol',
          in: 'header',
          description:
            'Subprotocol `bearer.<jwt>`; the hub selects that subprotocol. Keeps the token out of URLs and access logs (used by the client SDK).',
        },
      },
    },
  };
}

/** The file's exact text (stable key order, 2-space indent, trailing newline). */
export function renderAsyncApi(): string {
  return `${JSON.stringify(generateAsyncApi(), null, 2)}\n`;
}

function main(argv: string[]): number {
  const text = renderAsyncApi();
  if (argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(ASYNCAPI_PATH, 'utf8');
    } catch {
      // missing counts as stale
    }
    if (current !== text) {
      process.stderr.write('docs/asyncapi.json is stale: run `node bin/run-ts.mjs scripts/asyncapi.ts`\n');
      return 1;
    }
    process.stdout.write('docs/asyncapi.json is up to date\n');
    return 0;
  }
  mkdirSync(dirname(ASYNCAPI_PATH), { recursive: true });
  writeFileSync(ASYNCAPI_PATH, text);
  process.stdout.write(`wrote ${ASYNCAPI_PATH}\n`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
