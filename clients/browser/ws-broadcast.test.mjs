// The browser module's reorder and dedupe unit under node's own test runner (no dependencies):
// random interleavings of duplicates, delays and losses, answered as the service answers recovery.
// Run by `make test` (tests/unit/test_browser_module.py), or alone: node --test clients/browser/
import assert from "node:assert/strict";
import { test } from "node:test";

import { parseFrame, Reorderer } from "./ws-broadcast.js";

const HOLD = 1000;

function message(offset, epoch = "E") {
  return { type: 1, data: offset, received: 0, channel: "c", offset, epoch };
}

// A small seeded generator (mulberry32): every failure is reproducible from its seed.
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function scenario(draw) {
  const count = 1 + Math.floor(draw() * 30);
  const arrivals = [];
  for (let offset = 1; offset <= count; offset++) {
    const copies = Math.floor(draw() * 4); // 0: lost in transit
    for (let i = 0; i < copies; i++) arrivals.push([draw() * 5000, offset]);
  }
  arrivals.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return { count, arrivals, trimmed: Math.floor(draw() * (count + 1)) };
}

function run({ count, arrivals, trimmed }) {
  const order = new Reorderer(HOLD);
  const out = order.acknowledged("c", 0, "E", null, 0);
  const tick = (now) => {
    for (const channel of order.due(now)) {
      const point = order.point(channel);
      const recovered = point.offset >= trimmed;
      out.push(...order.acknowledged("c", count, "E", recovered, now));
      if (recovered) for (let o = point.offset + 1; o <= count; o++) out.push(...order.delivered(message(o), now));
    }
  };
  let now = 0;
  for (const [at, offset] of arrivals) {
    now = at;
    tick(now);
    out.push(...order.delivered(message(offset), now));
  }
  for (let deadline; (deadline = order.deadline()) !== null; ) {
    now = Math.max(now, deadline);
    tick(now);
  }
  return out;
}

test("each offset is delivered once, in order, or reported in exactly one gap", () => {
  for (let seed = 1; seed <= 500; seed++) {
    const s = scenario(random(seed));
    const out = run(s);
    const delivered = out.filter((o) => o.kind === "message").map((o) => o.message.offset);
    assert.deepEqual(delivered, [...new Set(delivered)].sort((a, b) => a - b), `seed ${seed}: in order, once`);
    const gaps = out.filter((o) => o.kind === "gap").map((o) => o.gap);
    const lastSeen = Math.max(0, ...s.arrivals.map(([, offset]) => offset));
    for (let offset = 1; offset <= s.count; offset++) {
      const accounted = delivered.includes(offset) + gaps.filter((g) => g.fromOffset <= offset && offset <= g.toOffset).length;
      if (offset <= lastSeen) assert.equal(accounted, 1, `seed ${seed}, offset ${offset}`);
      else assert.ok(accounted <= 1, `seed ${seed}, offset ${offset}`);
      if (s.trimmed === 0) assert.equal(gaps.length, 0, `seed ${seed}: the whole history kept, nothing lost`);
    }
  }
});

test("a refused recovery delivers what was held, with a gap for each hole", () => {
  const order = new Reorderer(HOLD);
  order.acknowledged("c", 0, "E", null, 0);
  order.delivered(message(1), 0);
  order.delivered(message(4), 0);
  assert.deepEqual(order.due(HOLD), ["c"]);
  assert.deepEqual(order.acknowledged("c", 6, "E", false, HOLD), [
    { kind: "gap", gap: { channel: "c", fromOffset: 2, toOffset: 3 } },
    { kind: "message", message: message(4) },
    { kind: "gap", gap: { channel: "c", fromOffset: 5, toOffset: 6 } },
  ]);
});

test("frames: a message with and without history, an ack, an error; anything else is null", () => {
  assert.deepEqual(parseFrame('{"type":1,"data":"x","received":5,"channel":"c","offset":3,"epoch":"E"}').message,
    { type: 1, data: "x", received: 5, channel: "c", offset: 3, epoch: "E" });
  assert.equal(parseFrame('{"type":1,"data":"x","received":5}').message.offset, null);
  assert.equal(parseFrame('{"action":"subscribed","channel":"c","offset":0,"epoch":"E","recovered":true}').recovered, true);
  const error = parseFrame('{"error":{"code":"rate_limited","message":"slow","retryAfterMs":250}}').error;
  assert.deepEqual([error.code, error.retryAfter], ["rate_limited", 250]);
  for (const other of ["[1]", "nope", '{"action":"whatever"}', '{"type":"1"}', "null"]) assert.equal(parseFrame(other), null);
});
