// Runs the built client (dist/) in Node against a live gateway and checks the wire contract:
// connect, live add/remove on the connection, patterns, resume after a broken stream,
// closing token_expired, 403 for a channel, and the long-poll fallback.
//
//   cargo run --release -- serve --dev --listen 127.0.0.1:18080 --data-dir /tmp/ssg
//   ssegate token --data-dir /tmp/ssg --sub smoke --subscribe 'smoke:**' --ttl 1h   # → SUB
//   ssegate token --data-dir /tmp/ssg --sub pub --publish '**' --ttl 1h            # → PUB
//   ssegate token --data-dir /tmp/ssg --sub smoke --subscribe 'smoke:**' --ttl 8s  # → SHORT (optional)
//   node scripts/smoke.mjs http://127.0.0.1:18080 "$SUB" "$PUB" ["$SHORT"]
//
// Not part of `npm test` (it needs the Rust server); exits non-zero on the first failure.
import { createClient } from "../dist/index.js";

const [url, sub, pub, short] = process.argv.slice(2);
if (!url || !sub || !pub) {
  console.error("usage: node scripts/smoke.mjs URL SUBSCRIBER_TOKEN PUBLISHER_TOKEN [SHORT_LIVED_TOKEN]");
  process.exit(2);
}
const run = Date.now().toString(36);
const ch = (name) => `smoke:${run}:${name}`;

async function publish(channel, data) {
  const r = await fetch(`${url}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${pub}`, "content-type": "application/json" },
    body: JSON.stringify({ channel, type: "smoke", data }),
  });
  if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
  return (await r.json()).ids[0];
}

function until(what, predicate, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

/** A fetch that records requests and can break the open stream like a network failure. */
function recordingFetch({ holdStreams = false } = {}) {
  const calls = [];
  let kill = null;
  const f = (input, init = {}) => {
    const u = new URL(String(input));
    calls.push({ path: u.pathname, method: init.method ?? "GET", headers: new Headers(init.headers), url: u, body: init.body });
    if (u.pathname === "/v1/stream") {
      if (holdStreams) {
        return new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
      }
      const ctrl = new AbortController();
      init.signal?.addEventListener("abort", () => ctrl.abort());
      kill = () => ctrl.abort(new TypeError("network down"));
      return fetch(input, { ...init, signal: ctrl.signal });
    }
    return fetch(input, init);
  };
  return { fetch: f, calls, breakStream: () => kill?.() };
}

const check = (ok, msg) => {
  if (!ok) throw new Error("FAILED: " + msg);
  console.log("ok -", msg);
};

// 1. Stream, live subscription changes, patterns.
const net = recordingFetch();
const rt = createClient({ url, getToken: () => sub, fetch: net.fetch, environment: null, shareAcrossTabs: false });
const got = { a: [], b: [], any: [] };
rt.subscribe(ch("a"), (e) => got.a.push(e.id));
await until("connected", () => rt.state.status === "connected");
check(true, "connected by stream");
const a1 = await publish(ch("a"), 1);
await until("event on a", () => got.a.includes(a1));
check(true, "event delivered");
const offB = rt.subscribe(ch("b"), (e) => got.b.push(e.id));
rt.subscribe(`smoke:${run}:*`, (e) => got.any.push(e.id));
await until("subscription POST", () => net.calls.some((c) => c.path.endsWith("/subscriptions")));
await new Promise((r) => setTimeout(r, 200));
const b1 = await publish(ch("b"), 2);
await until("event on b", () => got.b.includes(b1) && got.any.includes(b1));
check(net.calls.filter((c) => c.path === "/v1/stream").length === 1, "channels added on the live connection, no reconnect");

// 2. Resume after a broken stream, with what was published meanwhile.
net.breakStream();
await until("reconnecting", () => rt.state.status === "reconnecting");
const a2 = await publish(ch("a"), 3);
await until("resumed", () => got.a.includes(a2), 40_000);
const streams = net.calls.filter((c) => c.path === "/v1/stream");
check(streams[1].headers.get("last-event-id") === b1, `resumed with Last-Event-ID ${b1}`);
check(got.a.filter((x) => x === a1).length === 1, "no duplicate after resume");

// 3. Remove on the live connection.
offB();
await until("remove POST", () => net.calls.some((c) => c.body && JSON.parse(c.body).remove));
check(true, "channel removed on the live connection");
rt.close();

// 4. 403 for a channel the token does not grant.
const denied = await new Promise((resolve) => {
  const c = createClient({ url, getToken: () => sub, environment: null, shareAcrossTabs: false });
  c.subscribe("forbidden:x", () => {}, { onError: (e) => (c.close(), resolve(e)) });
  setTimeout(() => (c.close(), resolve(null)), 5000);
});
check(denied?.code === "forbidden_channel" && denied.channels?.includes("forbidden:x"), "403 reaches onError with the channel");

// 5. Long-poll fallback when the stream is held back.
const held = recordingFetch({ holdStreams: true });
const polled = [];
const pc = createClient({ url, getToken: () => sub, fetch: held.fetch, environment: null, shareAcrossTabs: false, pollFallbackAfterMs: 500, pollTimeoutMs: 2000 });
pc.subscribe(ch("p"), (e) => polled.push(e.id));
await until("poll connected", () => pc.state.status === "connected" && pc.state.transport === "poll");
const p1 = await publish(ch("p"), 4);
await until("polled event", () => polled.includes(p1));
check(true, "long-poll fallback delivers");
pc.close();

// 6. A token that expires: closing token_expired, getToken("expired"), resume.
if (short) {
  const reasons = [];
  const tc = createClient({ url, getToken: (r) => (reasons.push(r), reasons.length === 1 ? short : sub), environment: null, shareAcrossTabs: false });
  const seen = [];
  tc.subscribe(ch("t"), (e) => seen.push(e.id));
  await until("connected", () => tc.state.status === "connected");
  await until("token expiry", () => reasons.includes("expired"), 30_000);
  const t1 = await publish(ch("t"), 5);
  await until("event after refresh", () => seen.includes(t1));
  check(true, `closing token_expired refreshed the token (${reasons.join(", ")})`);
  tc.close();
}
console.log("smoke: all passed");
