import net from 'node:net';
import { randomBytes, randomFillSync } from 'node:crypto';
import { wallNow } from './clock.ts';

/*
 * A deliberately thin WebSocket client for load generation: it does the HTTP upgrade by
 * hand and then only walks frame headers to count frames, so thousands of connections per
 * process cost little more than the kernel's reads. A frame's payload is looked at in two
 * cases only: its "class byte" (the first letter of the event type, at a fixed offset, tells
 * events from control frames without parsing) and sampled latency probes (1 in
 * `sampleEvery` frames is collected and searched for its embedded timestamp).
 *
 * Server frames are never masked; client frames (pong, socket.io handshake) are.
 */

/** Payload offset of the event type's first letter: `{"type":"g…` and `42["g…`. */
export const CLASS_OFFSET = { plain: 9, socketio: 4 } as const;
/** guarantee_update, attendance_update, voting_update. */
const EVENT_CLASS = new Uint8Array(256);
for (const c of 'gav') EVENT_CLASS[c.charCodeAt(0)] = 1;

/** Counters shared by every connection of one worker. */
export class Sink {
  events = 0;
  other = 0;
  bytes = 0;
  first = 0;
  last = 0;
  seq = 0;
  latencies: number[] = [];
  latencyCap = 400_000;
  closed = 0;
  closeCodes: Record<string, number> = {};

  constructor(public sampleEvery: number) {}

  reset(sampleEvery: number) {
    this.events = 0;
    this.other = 0;
    this.bytes = 0;
    this.first = 0;
    this.last = 0;
    this.seq = 0;
    this.latencies = [];
    this.sampleEvery = sampleEvery;
  }

  latency(ms: number) {
    if (this.latencies.length < this.latencyCap) this.latencies.push(ms);
  }
}

export type ConnOptions = {
  host: string;
  port: number;
  path: string;
  localAddress?: string;
  protocol: 'plain' | 'socketio';
  /** socket.io CONNECT payload (the `auth` object), sent after the engine.io open packet. */
  sioAuth?: string;
  group: string;
  sink: Sink;
  timeoutMs?: number;
};

const CRLF2 = Buffer.from('\r\n\r\n');
const VOTER = '"voter_name":';
const COMMITTED = '"committed_at":';

/** A client frame (FIN set, masked as RFC 6455 requires of clients). */
export function maskedFrame(opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const hl = len < 126 ? 2 : 4;
  const out = Buffer.allocUnsafe(hl + 4 + len);
  out[0] = 0x80 | opcode;
  if (len < 126) out[1] = 0x80 | len;
  else {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  }
  const key = out.subarray(hl, hl + 4);
  randomFillSync(key);
  for (let i = 0; i < len; i++) out[hl + 4 + i] = (payload[i] as number) ^ (key[i & 3] as number);
  return out;
}

/** Index just past `"key":` and an optional space (jsonb's text form has one), or -1. */
function valueAt(s: string, key: string): number {
  const k = s.indexOf(key);
  if (k < 0) return -1;
  let i = k + key.length;
  if (s.charCodeAt(i) === 32) i++;
  return i;
}

/** Reads the embedded probe timestamp (`"voter_name":"T<ms>"`), or else `committed_at`, of an event frame. */
function probeTime(s: string): number | undefined {
  const v = valueAt(s, VOTER);
  if (v >= 0 && s.startsWith('"T', v)) {
    const t = Number.parseFloat(s.slice(v + 2, v + 26));
    if (Number.isFinite(t)) return t;
  }
  const c = valueAt(s, COMMITTED);
  if (c >= 0) {
    const t = Date.parse(s.slice(c + 1, c + 25));
    if (Number.isFinite(t)) return t;
  }
  return undefined;
}

export class RawConn {
  readonly sock: net.Socket;
  events = 0;
  open = false;
  closed = false;
  closeCode: number | undefined;
  private handshake: Buffer | null = Buffer.alloc(0);
  private rest: Buffer | null = null;
  private inFrame = false;
  private opcode = 0;
  private fin = false;
  private left = 0;
  private pos = 0;
  private cls = 0;
  private msgBytes = 0;
  private cap: Buffer[] | null = null;
  private readonly classOffset: number;
  private readonly sio: boolean;
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;
  readonly ready: Promise<void>;

  constructor(private readonly o: ConnOptions) {
    this.sio = o.protocol === 'socketio';
    this.classOffset = CLASS_OFFSET[o.protocol];
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    const timer = setTimeout(() => this.fail(new Error('timeout')), o.timeoutMs ?? 30_000);
    void this.ready.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    this.sock = net.connect({
      host: o.host,
      port: o.port,
      ...(o.localAddress ? { localAddress: o.localAddress } : {}),
    });
    this.sock.setNoDelay(true);
    this.sock.on('connect', () => {
      this.sock.write(
        `GET ${o.path} HTTP/1.1\r\nHost: ${o.host}:${o.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    this.sock.on('data', (b: Buffer) => this.onData(b));
    this.sock.on('error', (err) => this.fail(err));
    this.sock.on('close', () => {
      if (!this.open) this.fail(new Error('closed before open'));
      this.markClosed();
    });
  }

  private why: string | undefined;

  private fail(err: Error) {
    this.why ??= (err as Error & { code?: string }).code ?? err.message;
    if (!this.open) this.rejectReady(err);
    this.markClosed();
    if (!this.sock.destroyed) this.sock.destroy();
  }

  private markClosed() {
    if (this.closed) return;
    this.closed = true;
    if (this.open) {
      this.o.sink.closed++;
      const k = this.closeCode !== undefined ? String(this.closeCode) : `no close frame (${this.why ?? 'eof'})`;
      this.o.sink.closeCodes[k] = (this.o.sink.closeCodes[k] ?? 0) + 1;
    }
  }

  /** Ends the connection with a TCP reset: no TIME_WAIT left holding an ephemeral port. */
  destroy() {
    this.closed = true;
    this.open = false;
    if (!this.sock.destroyed) this.sock.resetAndDestroy();
  }

  send(text: string) {
    if (!this.sock.destroyed) this.sock.write(maskedFrame(0x1, Buffer.from(text)));
  }

  private onData(chunk: Buffer) {
    let buf = chunk;
    if (this.handshake) {
      const all = this.handshake.length ? Buffer.concat([this.handshake, chunk]) : chunk;
      const end = all.indexOf(CRLF2);
      if (end < 0) {
        this.handshake = all;
        return;
      }
      this.handshake = null;
      const status = all.toString('latin1', 9, 12);
      if (status !== '101') return this.fail(Object.assign(new Error(`HTTP ${status}`), { status }));
      // Upgraded. Ready comes with the first message (the server's greeting, or socket.io's CONNECT ack).
      buf = all.subarray(end + 4);
    }
    if (this.rest) {
      buf = Buffer.concat([this.rest, buf]);
      this.rest = null;
    }
    const sink = this.o.sink;
    const n = buf.length;
    let now = 0;
    let i = 0;
    while (i < n) {
      if (!this.inFrame) {
        if (n - i < 2) {
          this.rest = buf.subarray(i);
          break;
        }
        const b0 = buf[i] as number;
        const b1 = buf[i + 1] as number;
        const l7 = b1 & 0x7f;
        const hl = (l7 < 126 ? 2 : l7 === 126 ? 4 : 10) + (b1 & 0x80 ? 4 : 0);
        if (n - i < hl) {
          this.rest = buf.subarray(i);
          break;
        }
        let len = l7;
        if (l7 === 126) len = buf.readUInt16BE(i + 2);
        else if (l7 === 127) len = buf.readUInt32BE(i + 2) * 2 ** 32 + buf.readUInt32BE(i + 6);
        i += hl;
        const op = b0 & 0x0f;
        this.fin = (b0 & 0x80) !== 0;
        this.inFrame = true;
        this.left = len;
        this.pos = 0;
        if (op !== 0) {
          this.opcode = op;
          this.cls = 0;
          this.msgBytes = 0;
          const sampled = sink.sampleEvery > 0 && op < 8 && ++sink.seq % sink.sampleEvery === 0;
          this.cap = op >= 8 || sampled || !this.open || (this.sio && len < 256) ? [] : null;
        }
      }
      const take = this.left < n - i ? this.left : n - i;
      if (take > 0) {
        const off = this.classOffset - this.pos;
        if (off >= 0 && off < take) this.cls = buf[i + off] as number;
        if (this.cap) this.cap.push(buf.subarray(i, i + take));
        this.pos += take;
        this.left -= take;
        this.msgBytes += take;
        i += take;
      }
      if (this.left === 0) {
        this.inFrame = false;
        if (this.opcode >= 8) this.control();
        else if (this.fin) {
          if (EVENT_CLASS[this.cls] === 1 && this.open) {
            if (now === 0) now = wallNow();
            this.events++;
            sink.events++;
            sink.bytes += this.msgBytes;
            if (sink.first === 0) sink.first = now;
            sink.last = now;
            if (this.cap) {
              const t = probeTime(Buffer.concat(this.cap).toString('latin1'));
              if (t !== undefined) sink.latency(now - t);
            }
          } else {
            sink.other++;
            if (this.cap) this.message(Buffer.concat(this.cap).toString('latin1'));
          }
          this.cap = null;
        }
      }
    }
  }

  /** Non-event messages: greetings, socket.io's engine.io packets. */
  private message(text: string) {
    if (!this.sio) {
      if (!this.open) {
        this.open = true;
        this.resolveReady();
      }
      return;
    }
    if (text === '2')
      this.send('3'); // engine.io ping → pong
    else if (text.startsWith('0'))
      this.send(`40${this.o.sioAuth ?? ''}`); // open → CONNECT to "/"
    else if (text.startsWith('40') && !this.open) {
      this.open = true;
      this.resolveReady();
    } else if (text.startsWith('44') && !this.open) this.fail(new Error(`socket.io refused: ${text.slice(0, 80)}`));
  }

  private control() {
    const payload = this.cap ? Buffer.concat(this.cap) : Buffer.alloc(0);
    this.cap = null;
    if (this.opcode === 0x9) {
      if (!this.sock.destroyed) this.sock.write(maskedFrame(0xa, payload));
    } else if (this.opcode === 0x8) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      if (!this.open) this.fail(new Error(`closed ${this.closeCode} before open`));
      this.markClosed();
      this.sock.end();
    }
  }
}
