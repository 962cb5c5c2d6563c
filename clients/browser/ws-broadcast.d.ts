// Types of ws-broadcast.js (an ES module with no build step: this file is for editors and tsc only).

/** One delivered message; `offset`/`epoch` are null when the service keeps no history. */
export interface Message {
  readonly type: number;
  readonly data: unknown;
  readonly received: number | null;
  /** null: published to everyone. */
  readonly channel: string | null;
  readonly offset: number | null;
  readonly epoch: string | null;
}

/** Messages of a stream that may be lost: after `fromOffset - 1` (the last delivered) up to `toOffset`. */
export interface Gap {
  readonly channel: string | null;
  readonly fromOffset: number;
  readonly toOffset: number;
}

export class ServiceError extends Error {
  readonly code: string;
  /** When to send again, in ms (rate_limited, over_capacity), or null. */
  readonly retryAfter: number | null;
  constructor(code: string, message: string, retryAfter?: number | null);
}

export class ConnectionLost extends Error {}

export type Token = string | null | (() => string | null | Promise<string | null>);

export interface Options {
  /** A string, or a function asked again at every reconnect. */
  token?: Token;
  /** How long a message waits for a missing predecessor before the stream is recovered (ms, 1000). */
  hold?: number;
  /** A ping after this long without sending (ms, 5 minutes). */
  keepalive?: number;
  /** How long a request waits for its answer (ms, 10000). */
  replyTimeout?: number;
  /** Reconnect waits, full jitter (ms): first 1000, cap 30000, resetAfter 60000. */
  backoff?: { first?: number; cap?: number; resetAfter?: number };
}

export interface PublishOptions {
  type: number;
  channel?: string | null;
  echo?: boolean;
  retry?: boolean;
}

interface EventMap {
  open: CustomEvent<{ reconnects: number }>;
  close: CustomEvent<{ code: number; reason: string; reconnecting: boolean }>;
  message: CustomEvent<Message>;
  gap: CustomEvent<Gap>;
  error: CustomEvent<{ error: Error }>;
}

export class WsBroadcast extends EventTarget {
  constructor(url: string, options?: Options);
  readonly url: string;
  /** How many times the connection was opened again. */
  readonly reconnects: number;
  /** Opens the first connection; rejects when it fails. */
  connect(): Promise<void>;
  /** Resolves on the ack; rejects with a ServiceError, or ConnectionLost while reconnecting. */
  subscribe(channel: string): Promise<void>;
  unsubscribe(channel: string): Promise<void>;
  publish(data: unknown, options: PublishOptions): Promise<void>;
  /** Closes for good: no reconnect. */
  close(): void;
  addEventListener<K extends keyof EventMap>(type: K, listener: (event: EventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof EventMap>(type: K, listener: (event: EventMap[K]) => void, options?: boolean | EventListenerOptions): void;
}

export class Backoff {
  constructor(options?: { first?: number; cap?: number; resetAfter?: number });
  nextDelay(): number;
  connectionEnded(lastedMs: number): void;
}

export type Output = { kind: "message"; message: Message } | { kind: "gap"; gap: Gap };

/** The reorder and dedupe unit, sans I/O (time passed in, ms). */
export class Reorderer {
  constructor(hold?: number);
  delivered(message: Message, now: number): Output[];
  acknowledged(channel: string | null, offset: number | null, epoch: string | null, recovered: boolean | null, now: number): Output[];
  due(now: number): (string | null)[];
  deadline(): number | null;
  restart(now: number): void;
  point(channel: string | null): { offset: number; epoch: string } | null;
  forget(channel: string | null): Output[];
}

export function parseFrame(text: string):
  | { kind: "message"; message: Message }
  | { kind: "ack"; action: "subscribed" | "unsubscribed" | "resumed"; channel: string | null; offset: number | null; epoch: string | null; recovered: boolean | null; lost: boolean }
  | { kind: "pong"; lost: boolean }
  | { kind: "error"; error: ServiceError }
  | null;
