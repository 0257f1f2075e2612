import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { constants, inflateRawSync } from 'node:zlib';
import { maskedFrame } from './rawws.ts';

/*
 * A load-generating WebSocket client that offers permessage-deflate the way browsers do
 * (`permessage-deflate; client_max_window_bits`) and counts what the server really sends:
 * bytes on the wire (TCP payload after the upgrade) and, per message, its size before and
 * after compression. With `decode`, every message is inflated and handed over as text (the
 * real-size scenario parses dashboard updates and probes); without it, only frame headers
 * are walked, so a few thousand connections cost little.
 *
 * Inflating without a streaming zlib context: a server that keeps its context (no
 * `server_no_context_takeover`, uWS's DEDICATED_COMPRESSOR) may refer back into the previous
 * messages' text, at most its window (2^server_max_window_bits bytes) back; so each message is
 * inflated on its own with that much of the text before it as the preset dictionary, which is
 * exactly what a streaming inflater would hold.
 */

const CRLF2 = Buffer.from('\r\n\r\n');
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

export type Negotiated = { deflate: boolean; serverNoContextTakeover: boolean; windowBits: number };

/** Parses the server's `Sec-WebSocket-Extensions` answer. */
export function negotiated(header: string | undefined): Negotiated {
  const ext = (header ?? '')
    .split(',')
    .map((e) => e.trim())
    .find((e) => e.startsWith('permessage-deflate'));
  if (!ext) return { deflate: false, serverNoContextTakeover: false, windowBits: 15 };
  const params = ext.split(';').map((p) => p.trim());
  const wb = params.find((p) => p.startsWith('server_max_window_bits'));
  return {
    deflate: true,
    serverNoContextTakeover: params.includes('server_no_context_takeover'),
    windowBits: wb ? Number(wb.split('=')[1]) : 15,
  };
}

export type Counters = {
  /** TCP bytes read after the upgrade response. */
  wire: number;
  /** Messages (text or binary) received. */
  messages: number;
  /** Their payload bytes as received (compressed where the server compressed). */
  payload: number;
  /** Their bytes once inflated (what the application sees); compressed ones only with `decode`. */
  inflated: number;
  /** Messages that arrived compressed. */
  compressed: number;
};

export type DeflateConnOptions = {
  host: string;
  port: number;
  path: string;
  /** Offer permessage-deflate (as browsers do). */
  offer: boolean;
  /** Inflate every message and call `onText` with it. */
  decode: boolean;
  onText?: (text: string, conn: DeflateConn) => void;
  onClose?: (code: number | undefined, conn: DeflateConn) => void;
  timeoutMs?: number;
  headers?: Record<string, string>;
};

export class DeflateConn {
  readonly sock: net.Socket;
  readonly counters: Counters = { wire: 0, messages: 0, payload: 0, inflated: 0, compressed: 0 };
  ext: Negotiated = { deflate: false, serverNoContextTakeover: false, windowBits: 15 };
  open = false;
  closed = false;
  closeCode: number | undefined;
  readonly ready: Promise<void>;
  private handshake: Buffer | null = Buffer.alloc(0);
  private rest: Buffer | null = null;
  private parts: Buffer[] = [];
  private opcode = 0;
  private rsv1 = false;
  /** The last inflated bytes, up to the server's window (context takeover only). */
  private history: Buffer = Buffer.alloc(0);
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;

  constructor(private readonly o: DeflateConnOptions) {
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    const timer = setTimeout(() => this.fail(new Error('timeout')), o.timeoutMs ?? 30_000);
    void this.ready.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    this.sock = net.connect({ host: o.host, port: o.port });
    this.sock.setNoDelay(true);
    this.sock.on('connect', () => {
      const extra = Object.entries(o.headers ?? {})
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('');
      this.sock.write(
        `GET ${o.path} HTTP/1.1\r\nHost: ${o.host}:${o.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
          (o.offer ? 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n' : '') +
          `${extra}\r\n`,
      );
    });
    this.sock.on('data', (b: Buffer) => this.onData(b));
    this.sock.on('error', (err) => this.fail(err));
    this.sock.on('close', () => this.markClosed());
  }

  send(text: string): void {
    if (!this.sock.destroyed) this.sock.write(maskedFrame(0x1, Buffer.from(text)));
  }

  /** Ends with a TCP reset (no TIME_WAIT). */
  destroy(): void {
    this.closed = true;
    if (!this.sock.destroyed) this.sock.resetAndDestroy();
  }

  private fail(err: Error) {
    if (!this.open) this.rejectReady(err);
    this.markClosed();
    if (!this.sock.destroyed) this.sock.destroy();
  }

  private markClosed() {
    if (this.closed) return;
    this.closed = true;
    if (!this.open) this.rejectReady(new Error('closed before open'));
    this.o.onClose?.(this.closeCode, this);
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
      const head = all.toString('latin1', 0, end);
      const status = head.slice(9, 12);
      if (status !== '101') return this.fail(Object.assign(new Error(`HTTP ${status}`), { status }));
      const ext = /^sec-websocket-extensions:\s*(.*)$/im.exec(head)?.[1];
      this.ext = negotiated(ext);
      this.open = true;
      this.resolveReady();
      buf = all.subarray(end + 4);
    }
    this.counters.wire += buf.length;
    if (this.rest) {
      buf = Buffer.concat([this.rest, buf]);
      this.rest = null;
    }
    let i = 0;
    const n = buf.length;
    while (i < n) {
      if (n - i < 2) break;
      const b0 = buf[i] as number;
      const b1 = buf[i + 1] as number;
      const l7 = b1 & 0x7f;
      const hl = l7 < 126 ? 2 : l7 === 126 ? 4 : 10;
      if (n - i < hl) break;
      const len =
        l7 < 126
          ? l7
          : l7 === 126
            ? buf.readUInt16BE(i + 2)
            : buf.readUInt32BE(i + 2) * 2 ** 32 + buf.readUInt32BE(i + 6);
      if (n - i < hl + len) break;
      const payload = buf.subarray(i + hl, i + hl + len);
      i += hl + len;
      const op = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (op >= 8) {
        this.control(op, payload);
        continue;
      }
      if (op !== 0) {
        this.opcode = op;
        this.rsv1 = (b0 & 0x40) !== 0;
        this.parts = [];
      }
      this.parts.push(payload);
      if (fin) this.message();
    }
    if (i < n) this.rest = Buffer.from(buf.subarray(i));
  }

  private message() {
    const c = this.counters;
    const size = this.parts.reduce((s, p) => s + p.length, 0);
    c.messages++;
    c.payload += size;
    if (!this.rsv1) {
      c.inflated += size;
      // Sent as it is: not part of the compressor's window (RFC 7692: only compressed messages are).
      if (this.o.decode && this.opcode === 1) this.o.onText?.(Buffer.concat(this.parts).toString('utf8'), this);
      return;
    }
    c.compressed++;
    if (!this.o.decode) return; // `inflated` counts only decoded connections' compressed messages
    const input = Buffer.concat([...this.parts, TAIL]);
    const keep = this.ext.deflate && !this.ext.serverNoContextTakeover;
    const out = inflateRawSync(input, {
      finishFlush: constants.Z_SYNC_FLUSH,
      ...(keep && this.history.length > 0 ? { dictionary: this.history } : {}),
    });
    c.inflated += out.length;
    if (keep) this.remember(out);
    if (this.opcode === 1) this.o.onText?.(out.toString('utf8'), this);
  }

  private remember(bytes: Buffer) {
    const window = 2 ** this.ext.windowBits;
    if (bytes.length >= window) this.history = Buffer.from(bytes.subarray(bytes.length - window));
    else {
      const keepOld = Math.max(0, window - bytes.length);
      this.history = Buffer.concat([this.history.subarray(Math.max(0, this.history.length - keepOld)), bytes]);
    }
  }

  private control(op: number, payload: Buffer) {
    if (op === 0x9) {
      if (!this.sock.destroyed) this.sock.write(maskedFrame(0xa, payload));
    } else if (op === 0x8) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this.markClosed();
      this.sock.end();
    }
  }
}
