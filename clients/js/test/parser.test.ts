import { describe, expect, it } from "vitest";
import { EventStreamParser, type SseMessage } from "../src/parser.js";

const enc = new TextEncoder();

/** Parses `chunks` (strings are UTF-8 encoded unless `asText`) and returns what was dispatched. */
function parse(chunks: (string | Uint8Array)[], opts: { asText?: boolean; initialId?: string } = {}) {
  const messages: Omit<SseMessage, "hasId">[] = [];
  const withId: boolean[] = [];
  const retries: number[] = [];
  const p = new EventStreamParser(
    ({ hasId, ...m }) => {
      withId.push(hasId);
      messages.push(m);
    },
    (ms) => retries.push(ms),
    opts.initialId,
  );
  for (const c of chunks) p.push(typeof c === "string" && !opts.asText ? enc.encode(c) : c);
  p.end();
  return { messages, withId, retries, lastEventId: p.lastEventId, data: messages.map((m) => m.data) };
}

/** Every split of the byte stream into single bytes, and into two parts at each position. */
function splits(text: string): Uint8Array[][] {
  const bytes = enc.encode(text);
  const out: Uint8Array[][] = [[...bytes].map((b) => Uint8Array.of(b))];
  for (let i = 0; i <= bytes.length; i++) out.push([bytes.slice(0, i), bytes.slice(i)]);
  return out;
}

describe("EventStreamParser: hasId", () => {
  it("says whether an event had an id field of its own (history frames have none)", () => {
    const r = parse(["id: 5\ndata: a\n\ndata: b\n\nid: 5\ndata: c\n\nid\ndata: d\n\n"]);
    expect(r.withId).toEqual([true, false, true, true]);
    expect(r.messages.map((m) => m.lastEventId)).toEqual(["5", "5", "5", ""]);
  });
});

describe("EventStreamParser: line endings", () => {
  it("accepts LF, CR and CRLF, mixed in one stream", () => {
    const r = parse(["data: a\n\ndata: b\r\rdata: c\r\n\r\ndata: d\n\r\n"]);
    expect(r.data).toEqual(["a", "b", "c", "d"]);
  });

  it("treats a CRLF split across two chunks as one line ending", () => {
    // Were CR and LF two endings, the LF would be an empty line and dispatch "a" alone.
    const r = parse(["data: a\r", "\ndata: b\r\n\r\n"]);
    expect(r.data).toEqual(["a\nb"]);
  });

  it("ends the line at a CR that closes a chunk, without waiting for the next chunk", () => {
    const seen: string[] = [];
    const p = new EventStreamParser((m) => seen.push(m.data));
    p.push(enc.encode("data: now\n\r"));
    expect(seen).toEqual(["now"]);
  });

  it("a CR at the end of a chunk followed by a chunk not starting with LF", () => {
    expect(parse(["data: a\r", "data: b\r", "\r"]).data).toEqual(["a\nb"]);
    expect(parse(["data: a\r", "", "\n", "\n"]).data).toEqual(["a"]);
  });

  it("gives the same events however the bytes are split", () => {
    const stream =
      "\uFEFF: hi\r\nretry: 1234\rid: 7\nevent: x\ndata: ä€😀\r\ndata:two\r\n\r\ndata: last\n\n";
    for (const chunks of splits(stream)) {
      const r = parse(chunks);
      expect(r.messages).toEqual([
        { type: "x", data: "ä€😀\ntwo", lastEventId: "7" },
        { type: "message", data: "last", lastEventId: "7" },
      ]);
      expect(r.retries).toEqual([1234]);
    }
  });
});

describe("EventStreamParser: byte order mark and UTF-8", () => {
  it("drops one leading BOM", () => {
    expect(parse([Uint8Array.of(0xef, 0xbb, 0xbf), "data: x\n\n"]).data).toEqual(["x"]);
    expect(parse([Uint8Array.of(0xef), Uint8Array.of(0xbb, 0xbf), "data: y\n\n"]).data).toEqual(["y"]);
    expect(parse(["\uFEFFdata: z\n\n"], { asText: true }).data).toEqual(["z"]);
  });

  it("keeps a BOM that is not at the very start (the line's field is then unknown)", () => {
    const r = parse(["data: a\n\n", "\uFEFFdata: b\n\n"]);
    expect(r.data).toEqual(["a"]);
    const t = parse(["data: a\n\n", "\uFEFFdata: b\n\n"], { asText: true });
    expect(t.data).toEqual(["a"]);
    // A second BOM right after the first one is content, not a BOM.
    expect(parse(["\uFEFF\uFEFFdata: c\n\n"]).data).toEqual([]);
  });

  it("decodes multi-byte characters split across chunks", () => {
    const bytes = enc.encode("data: héllo € 😀 日本\n\n");
    for (let i = 1; i < bytes.length; i++) {
      for (let j = i; j < bytes.length; j++) {
        const r = parse([bytes.slice(0, i), bytes.slice(i, j), bytes.slice(j)]);
        expect(r.data).toEqual(["héllo € 😀 日本"]);
      }
    }
  });
});

describe("EventStreamParser: fields", () => {
  it("ignores comment lines", () => {
    expect(parse([": ok\n\n:hb\ndata: x\n:again\n\n"]).data).toEqual(["x"]);
  });

  it("takes a line without colon as a field with an empty value", () => {
    const r = parse(["data\n\n", "event: t\nevent\ndata: y\n\n"]);
    expect(r.messages).toEqual([
      { type: "message", data: "", lastEventId: "" },
      { type: "message", data: "y", lastEventId: "" },
    ]);
  });

  it("removes exactly one leading space after the colon", () => {
    expect(parse(["data:  two\n\ndata:none\n\ndata: \n\n"]).data).toEqual([" two", "none", ""]);
    expect(parse(["event:  spaced\ndata: x\n\n"]).messages[0]!.type).toBe(" spaced");
  });

  it("joins data lines with LF and strips only the final LF", () => {
    expect(parse(["data: a\ndata: b\ndata:\ndata: c\n\n"]).data).toEqual(["a\nb\n\nc"]);
    expect(parse(["data: a\ndata:\n\n"]).data).toEqual(["a\n"]);
  });

  it("does not dispatch an event whose data buffer is empty, and resets its type", () => {
    const r = parse(["event: lonely\n\nid: 3\n\ndata: x\n\n"]);
    // The id came with an event of its own (not dispatched): the data event has none.
    expect(r.withId).toEqual([false]);
    expect(r.messages).toEqual([{ type: "message", data: "x", lastEventId: "3" }]);
  });

  it("ignores an id containing NUL", () => {
    const r = parse(["id: 1\ndata: a\n\nid: 2\u00003\ndata: b\n\n"]);
    expect(r.messages.map((m) => m.lastEventId)).toEqual(["1", "1"]);
  });

  it("keeps the last event id across events; an empty id resets it", () => {
    const r = parse(["id: 5\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 6\n\n"]);
    expect(r.messages.map((m) => m.lastEventId)).toEqual(["5", "5", ""]);
    expect(r.lastEventId).toBe("6"); // set by a dispatch without data
  });

  it("starts from a given last event id (resumed stream)", () => {
    const r = parse(["data: a\n\n"], { initialId: "41" });
    expect(r.messages[0]!.lastEventId).toBe("41");
  });

  it("accepts retry only when it is all ASCII digits", () => {
    const r = parse(["retry: 1500\nretry: 15a\nretry: -1\nretry: 1.5\nretry:\nretry:  20\nretry: ٣\nretry: 0\n\n"]);
    expect(r.retries).toEqual([1500, 0]);
  });

  it("ignores unknown fields and field names differing in case", () => {
    expect(parse(["foo: bar\nData: no\ndata: yes\n\n"]).data).toEqual(["yes"]);
  });

  it("discards an event the stream ends in the middle of", () => {
    expect(parse(["data: a\n\ndata: cut\n"]).data).toEqual(["a"]);
    expect(parse(["data: a\n\ndata: cut"]).data).toEqual(["a"]);
  });

  it("parses the gateway's frames", () => {
    const env = { id: "1042", channel: "logs:w1:f1", type: "log.created", time: "t", data: { a: 1 } };
    const r = parse([
      ": ok\n\nretry: 2000\n\nevent: connected\n",
      'data: {"channels":["logs:w1:f1"],"connection_id":"c_1","heartbeat_ms":15000,"user":"u1"}\n\n',
      `id: 1042\nevent: log.created\ndata: ${JSON.stringify(env)}\n\n: hb\n\n`,
    ]);
    expect(r.retries).toEqual([2000]);
    expect(r.messages.map((m) => [m.type, m.lastEventId])).toEqual([
      ["connected", ""],
      ["log.created", "1042"],
    ]);
    expect(JSON.parse(r.messages[1]!.data)).toEqual(env);
  });
});
