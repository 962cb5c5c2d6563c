// ws-broadcast's browser client: an ES module, no dependencies, no build step.
//
//   import { WsBroadcast } from "./ws-broadcast.js";
//   const client = new WsBroadcast("wss://ID.execute-api.REGION.amazonaws.com/api", { token: () => getToken() });
//   client.addEventListener("message", (event) => console.log(event.detail.data, event.detail.offset));
//   client.addEventListener("gap", (event) => console.warn("lost", event.detail));
//   await client.connect();
//   await client.subscribe("room-1");
//   await client.publish({ x: 1 }, { type: 1, channel: "room-1" });
//
// The same semantics as the Python client (clients/python): it reconnects after any close it did not
// ask for (full-jitter exponential backoff: the first retry within 1 s, at most 30 s, reset after a
// healthy minute), subscribes again to every channel with `since` = the last offset it delivered,
// resumes the messages to everyone, and delivers each message once, in offset order per stream: a
// duplicate is dropped, a message whose predecessor is missing is held for `hold` ms, then the
// stream is recovered from the service's history; what cannot be recovered is a "gap" event. A ping
// goes out after `keepalive` ms without sending; a pong saying `lost` reopens the connection.
//
// The token travels as the `bearer.<token>` subprotocol beside `wsbroadcast` (a browser cannot set
// headers on a WebSocket); a function is asked again at every reconnect. A browser is not told the
// HTTP status of a refused handshake, so unlike the Python client it cannot tell an expired token from
// a network failure: it keeps retrying with backoff, asking for a token each time, and says so in an
// "error" event.
//
// Events: "open" (detail: { reconnects }), "close" ({ code, reason, reconnecting }), "message" (a
// message: { type, data, received, channel, offset, epoch }), "gap" ({ channel, fromOffset, toOffset }),
// "error" ({ error }: a refusal no request was waiting for, or a failed handshake).

const SUBPROTOCOL = "wsbroadcast";

/** The service refused a request: `code` and `message` are its words, `retryAfter` in ms or null. */
export class ServiceError extends Error {
  constructor(code, message, retryAfter = null) {
    super(`${code}: ${message}`);
    this.name = "ServiceError";
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** The connection closed before the service answered. */
export class ConnectionLost extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionLost";
  }
}

const RETRYABLE = new Set(["rate_limited", "over_capacity"]);

/**
 * Per-stream order and dedupe, sans I/O (time is passed in): the same unit as the Python client's
 * ordering.Reorderer. Outputs are { kind: "message", message } and { kind: "gap", gap }.
 */
export class Reorderer {
  constructor(hold = 1000) {
    this.hold = hold;
    this.streams = new Map(); // channel (null: everyone) -> stream
  }

  stream(channel) {
    let stream = this.streams.get(channel);
    if (!stream) {
      stream = { channel, epoch: null, position: null, held: new Map(), heldSince: null, recovering: false };
      this.streams.set(channel, stream);
    }
    return stream;
  }

  delivered(message, now) {
    if (message.offset == null || message.epoch == null) return [{ kind: "message", message }];
    const stream = this.stream(message.channel);
    let out = [];
    if (stream.position === null) {
      stream.position = message.offset - 1; // no ack gave a position (the messages to everyone)
      stream.epoch = message.epoch;
    } else if (message.epoch !== stream.epoch) {
      out = moveTo(stream, message.offset - 1, message.epoch);
    }
    if (message.offset <= stream.position || stream.held.has(message.offset)) return out;
    stream.held.set(message.offset, message);
    if (stream.heldSince === null) stream.heldSince = now;
    return out.concat(release(stream, now));
  }

  acknowledged(channel, offset, epoch, recovered, now) {
    if (offset == null || epoch == null) return []; // the service keeps no history
    const stream = this.stream(channel);
    stream.recovering = false;
    if (recovered === true) {
      stream.heldSince = stream.held.size ? now : null; // the replay follows: give it time
      return [];
    }
    if (recovered === false) return moveTo(stream, offset, epoch);
    if (stream.position === null) {
      stream.position = offset;
      stream.epoch = epoch;
      for (const early of [...stream.held.keys()]) if (early <= offset) stream.held.delete(early);
      return release(stream, now);
    }
    return [];
  }

  /** Streams that waited `hold` ms for a missing message: recover each, once. */
  due(now) {
    const due = [];
    for (const stream of this.streams.values()) {
      if (stream.recovering || stream.heldSince === null || now < stream.heldSince + this.hold) continue;
      stream.recovering = true;
      due.push(stream.channel);
    }
    return due;
  }

  deadline() {
    let next = null;
    for (const s of this.streams.values()) {
      if (s.heldSince !== null && !s.recovering) next = Math.min(next ?? Infinity, s.heldSince + this.hold);
    }
    return next;
  }

  restart(now) {
    for (const stream of this.streams.values()) {
      stream.recovering = false;
      if (stream.held.size) stream.heldSince = now;
    }
  }

  /** Where a stream stands ({ offset, epoch }), or null. */
  point(channel) {
    const stream = this.streams.get(channel);
    return stream && stream.position !== null ? { offset: stream.position, epoch: stream.epoch } : null;
  }

  forget(channel) {
    const stream = this.streams.get(channel);
    this.streams.delete(channel);
    return stream ? giveUp(stream) : [];
  }
}

function release(stream, now) {
  const out = [];
  while (stream.held.has(stream.position + 1)) {
    stream.position += 1;
    out.push({ kind: "message", message: stream.held.get(stream.position) });
    stream.held.delete(stream.position);
  }
  if (!stream.held.size) stream.heldSince = null;
  else if (out.length) stream.heldSince = now;
  return out;
}

function gap(stream, fromOffset, toOffset) {
  return { kind: "gap", gap: { channel: stream.channel, fromOffset, toOffset } };
}

function giveUp(stream) {
  const out = [];
  for (const offset of [...stream.held.keys()].sort((a, b) => a - b)) {
    if (stream.position !== null && offset > stream.position + 1) out.push(gap(stream, stream.position + 1, offset - 1));
    out.push({ kind: "message", message: stream.held.get(offset) });
    stream.position = offset;
  }
  stream.held.clear();
  stream.heldSince = null;
  return out;
}

function moveTo(stream, offset, epoch) {
  const out = giveUp(stream);
  const further = stream.position === null || epoch !== stream.epoch || offset > stream.position;
  if (stream.position !== null && further) out.push(gap(stream, stream.position + 1, offset));
  if (further) stream.position = offset;
  stream.epoch = epoch;
  return out;
}

/** Parse one frame from the service; null for what this client does not understand. */
export function parseFrame(text) {
  let doc;
  try { doc = JSON.parse(text); } catch { return null; }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) return null;
  if (doc.error && typeof doc.error === "object") {
    const { code, message, retryAfterMs } = doc.error;
    return { kind: "error", error: new ServiceError(String(code), String(message ?? ""), Number.isInteger(retryAfterMs) ? retryAfterMs : null) };
  }
  const position = Number.isInteger(doc.offset) && doc.offset >= 0 && typeof doc.epoch === "string"
    ? { offset: doc.offset, epoch: doc.epoch } : { offset: null, epoch: null };
  if (doc.action === "pong") return { kind: "pong", lost: doc.lost === true };
  if (["subscribed", "unsubscribed", "resumed"].includes(doc.action)) {
    const recovered = typeof doc.recovered === "boolean" ? doc.recovered : null;
    const channel = doc.action === "resumed" ? null : doc.channel;
    return { kind: "ack", action: doc.action, channel, recovered, lost: doc.lost === true, ...position };
  }
  if ("action" in doc || !Number.isInteger(doc.type)) return null;
  const message = Object.freeze({
    type: doc.type, data: doc.data ?? null, received: Number.isInteger(doc.received) ? doc.received : null,
    channel: typeof doc.channel === "string" ? doc.channel : null, ...position,
  });
  return { kind: "message", message };
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** Full-jitter exponential backoff, in ms. */
export class Backoff {
  constructor({ first = 1000, cap = 30000, resetAfter = 60000 } = {}) {
    Object.assign(this, { first, cap, resetAfter, failures: 0 });
  }
  nextDelay() {
    const bound = Math.min(this.cap, this.first * 2 ** Math.min(this.failures, 52));
    this.failures += 1;
    return bound * Math.random();
  }
  connectionEnded(lastedMs) {
    if (lastedMs >= this.resetAfter) this.failures = 0;
  }
}

export class WsBroadcast extends EventTarget {
  /**
   * options: token (string or function, sync or async, asked at every reconnect), hold (ms),
   * keepalive (ms), replyTimeout (ms), backoff ({ first, cap, resetAfter } in ms).
   */
  constructor(url, { token = null, hold = 1000, keepalive = 5 * 60 * 1000, replyTimeout = 10000, backoff = {} } = {}) {
    super();
    Object.assign(this, { url, reconnects: 0 });
    this._token = token;
    this._order = new Reorderer(hold);
    this._keepalive = keepalive;
    this._replyTimeout = replyTimeout;
    this._backoff = new Backoff(backoff);
    this._channels = new Map(); // wanted channel -> acknowledged on this connection
    this._requests = []; // waiting for an answer, oldest first
    this._hidden = new Set(); // own echoes not to deliver (channel|offset|epoch)
    this._limitUntil = 0;
    this._limitError = null;
    this._socket = null;
    this._open = null; // a promise of the open socket, while connecting
    this._closing = false;
    this._timer = null;
    this._lastSent = 0;
    this._reconnectNow = false; // the service lost our state: reopen without waiting
  }

  /** Open the first connection; rejects when it fails. */
  connect() {
    this._closing = false;
    return this._connectOnce().then(() => undefined);
  }

  /** Join a channel; resolves on the ack, rejects with the service's ServiceError. */
  async subscribe(channel) {
    if (!this._channels.has(channel)) this._channels.set(channel, false);
    try {
      await this._request({ action: "subscribe", channel }, { kind: "subscribe", channel });
    } catch (error) {
      if (error instanceof ServiceError) this._channels.delete(channel);
      throw error;
    }
  }

  async unsubscribe(channel) {
    this._channels.delete(channel);
    await this._request({ action: "unsubscribe", channel }, { kind: "unsubscribe", channel });
    this._emit(this._order.forget(channel));
  }

  /**
   * Publish `data` to everyone or to `channel`. To a stream this client is in that carries offsets,
   * it is sent with echo (its echo confirms it and gives its offset, which would otherwise look like
   * a hole) and the echo is delivered only when `echo` is true; any other publish is confirmed by
   * nothing (a refusal of it is an "error" event).
   * `retry`: on rate_limited/over_capacity wait `retryAfterMs` and send again instead of rejecting.
   */
  async publish(data, { type, channel = null, echo = false, retry = false } = {}) {
    // Only a stream with offsets would show our own message as a hole.
    const joined = channel === null || this._channels.get(channel) === true;
    const confirmed = joined && this._order.point(channel) !== null;
    for (;;) {
      const wait = this._limitUntil - performance.now();
      if (wait > 0) {
        if (!retry) throw new ServiceError(this._limitError.code, this._limitError.message, Math.ceil(wait));
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
      const message = { type, data, echo: echo || confirmed, ...(channel === null ? {} : { channel }) };
      const request = confirmed ? { kind: "publish", echoOf: canonical([channel, type, data]), deliverEcho: echo } : null;
      try {
        await this._request(message, request);
        return;
      } catch (error) {
        if (!retry || !(error instanceof ServiceError) || !RETRYABLE.has(error.code)) throw error;
      }
    }
  }

  /** Close for good: no reconnect. */
  close() {
    this._closing = true;
    clearTimeout(this._timer);
    if (this._socket) this._socket.close(1000);
    this._failRequests(new ConnectionLost("the client was closed"), false);
  }

  // ---- the connection's life ----------------------------------------------------------------------

  async _connectOnce(reconnect = false) {
    const raw = typeof this._token === "function" ? await this._token() : this._token;
    const protocols = raw ? [SUBPROTOCOL, `bearer.${raw}`] : [SUBPROTOCOL];
    const socket = new WebSocket(this.url, protocols);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onclose = (event) => reject(new ConnectionLost(`the handshake failed (${event.code})`));
    });
    if (reconnect) this.reconnects += 1;
    this._attach(socket);
    return socket;
  }

  _attach(socket) {
    const opened = performance.now();
    this._socket = socket;
    this._lastSent = opened;
    socket.onmessage = (event) => this._onFrame(parseFrame(event.data));
    socket.onclose = (event) => this._onClose(event, opened);
    this._dispatch("open", { reconnects: this.reconnects });
    this._schedule();
  }

  _onClose(event, opened) {
    this._socket = null;
    clearTimeout(this._timer);
    for (const channel of this._channels.keys()) this._channels.set(channel, false);
    this._failRequests(new ConnectionLost("the connection closed before the service answered"), true);
    this._dispatch("close", { code: event.code, reason: event.reason, reconnecting: !this._closing });
    if (this._closing) return;
    this._backoff.connectionEnded(performance.now() - opened);
    this._reopen(this._reconnectNow ? 0 : this._backoff.nextDelay());
    this._reconnectNow = false;
  }

  _reopen(delay) {
    setTimeout(async () => {
      if (this._closing) return;
      try {
        await this._connectOnce(true);
      } catch (error) {
        this._dispatch("error", { error });
        this._reopen(this._backoff.nextDelay());
        return;
      }
      this._restore();
    }, delay);
  }

  _restore() {
    this._order.restart(performance.now());
    for (const channel of this._channels.keys()) this._recover(channel);
    if (this._order.point(null)) this._recover(null);
  }

  _recover(channel) {
    const point = this._order.point(channel);
    const since = point ? { since: { offset: point.offset, epoch: point.epoch } } : {};
    if (channel === null && !point) return;
    this._requests.push({ kind: channel === null ? "resume" : "subscribe", channel, sentAt: performance.now() });
    this._send(channel === null ? { action: "resume", ...since } : { action: "subscribe", channel, ...since });
  }

  _reconnect() {
    this._reconnectNow = true;
    if (this._socket) this._socket.close(1000);
  }

  _schedule() {
    clearTimeout(this._timer);
    if (!this._socket) return;
    let wake = this._lastSent + this._keepalive;
    const deadline = this._order.deadline();
    if (deadline !== null) wake = Math.min(wake, deadline);
    for (const r of this._requests) if (r.sentAt !== undefined) wake = Math.min(wake, r.sentAt + this._replyTimeout);
    this._timer = setTimeout(() => this._tick(), Math.max(0, wake - performance.now()));
  }

  _tick() {
    const now = performance.now();
    if (!this._socket) return;
    if (now - this._lastSent >= this._keepalive) this._send({ action: "ping" });
    for (const channel of this._order.due(now)) this._recover(channel);
    for (const r of this._requests.filter((r) => r.sentAt !== undefined && now - r.sentAt >= this._replyTimeout)) {
      this._requests.splice(this._requests.indexOf(r), 1);
      if (r.channel === null || this._channels.has(r.channel)) this._recover(r.channel);
    }
    this._schedule();
  }

  // ---- frames -------------------------------------------------------------------------------------

  _onFrame(frame) {
    const now = performance.now();
    if (!frame) return;
    if (frame.kind === "message") {
      const message = frame.message;
      if (this._claimEcho(message)) {
        if (message.offset === null) return;
        this._hidden.add(`${message.channel}|${message.offset}|${message.epoch}`);
      }
      this._emit(this._order.delivered(message, now));
    } else if (frame.kind === "pong") {
      if (frame.lost) this._reconnect();
    } else if (frame.kind === "ack") {
      if (frame.lost) return this._reconnect();
      if (frame.action !== "unsubscribed") {
        this._emit(this._order.acknowledged(frame.channel, frame.offset, frame.epoch, frame.recovered, now));
        if (this._channels.has(frame.channel)) this._channels.set(frame.channel, true);
      }
      const kind = { subscribed: "subscribe", unsubscribed: "unsubscribe", resumed: "resume" }[frame.action];
      for (const r of this._requests.filter((r) => r.kind === kind && r.channel === frame.channel)) {
        this._requests.splice(this._requests.indexOf(r), 1);
        r.resolve?.();
      }
    } else if (frame.kind === "error") {
      this._onError(frame.error, now);
    }
    this._schedule();
  }

  _onError(error, now) {
    if (RETRYABLE.has(error.code) && error.retryAfter !== null) {
      this._limitUntil = Math.max(this._limitUntil, now + error.retryAfter);
      this._limitError = error;
    }
    const request = this._requests.shift();
    if (!request) return this._dispatch("error", { error });
    if (request.reject) return request.reject(error);
    // the client's own resubscribe or recovery
    if (RETRYABLE.has(error.code)) {
      request.sentAt = now + (error.retryAfter ?? 0) - this._replyTimeout; // sent again by _tick
      this._requests.push(request);
      return;
    }
    this._dispatch("error", { error });
    if (request.kind === "subscribe") this._channels.delete(request.channel);
    this._emit(this._order.forget(request.channel));
  }

  _claimEcho(message) {
    const key = canonical([message.channel, message.type, message.data]);
    const request = this._requests.find((r) => r.kind === "publish" && r.echoOf === key);
    if (!request) return false;
    this._requests.splice(this._requests.indexOf(request), 1);
    request.resolve();
    return !request.deliverEcho;
  }

  _emit(outputs) {
    for (const output of outputs) {
      if (output.kind === "gap") {
        this._dispatch("gap", output.gap);
        continue;
      }
      const m = output.message;
      const key = `${m.channel}|${m.offset}|${m.epoch}`;
      if (this._hidden.delete(key)) continue;
      this._dispatch("message", m);
    }
  }

  // ---- requests -----------------------------------------------------------------------------------

  async _request(message, request) {
    if (!this._socket) throw new ConnectionLost("not connected (reconnecting)");
    if (!request) return this._send(message);
    const answered = new Promise((resolve, reject) => Object.assign(request, { resolve, reject }));
    this._requests.push(request);
    this._send(message);
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new ConnectionLost(`no answer within ${this._replyTimeout} ms`)), this._replyTimeout);
    });
    try {
      return await Promise.race([answered, timeout]);
    } finally {
      clearTimeout(timer);
      const index = this._requests.indexOf(request);
      if (index >= 0) this._requests.splice(index, 1);
    }
  }

  _failRequests(error, keepSubscribes) {
    const kept = [];
    for (const r of this._requests) {
      if (keepSubscribes && r.kind === "subscribe" && r.reject) kept.push(r);
      else r.reject?.(error);
    }
    this._requests = kept;
  }

  _send(message) {
    this._socket.send(JSON.stringify(message));
    this._lastSent = performance.now();
    this._schedule();
  }

  _dispatch(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
