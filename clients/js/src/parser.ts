/**
 * A WHATWG-conformant `text/event-stream` parser
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
 *
 * Feed it the response body chunk by chunk (`push`), then `end()`. It owns the UTF-8 decoding
 * (a `TextDecoder` in streaming mode, so a multi-byte character split across chunks decodes
 * once whole; a BOM is dropped only at the very start of the stream), the line splitting (CR,
 * LF and CRLF — also a CRLF split across two chunks, which is one line ending), and the field
 * rules: comments, fields without a colon, one leading space stripped from the value, `id`
 * containing NUL ignored, `retry` only when all ASCII digits, `data` lines joined with LF, no
 * dispatch for an empty data buffer, and a last event id that persists across events.
 */

/** One dispatched event, as `EventSource` would fire it. */
export interface SseMessage {
  /** The `event:` field, `"message"` when absent. */
  type: string;
  /** The `data:` lines joined with LF. */
  data: string;
  /** The stream's last event id after this event (it persists across events). */
  lastEventId: string;
  /** Whether this event had an `id` field of its own. */
  hasId: boolean;
}

const LF = 10;
const CR = 13;

export class EventStreamParser {
  /** The last event id string: what a reconnect sends as `Last-Event-ID`. */
  lastEventId: string;

  private readonly decoder = new TextDecoder("utf-8");
  /** Text after the last line ending, waiting for the rest of its line. */
  private pending = "";
  /** The previous chunk ended in CR: an LF at the start of the next one belongs to it. */
  private skipLF = false;
  /** No character seen yet: a BOM here is dropped (string input; bytes go through the decoder). */
  private atStart = true;
  private data = "";
  private eventType = "";
  private idBuffer: string;
  /** The event being read has an `id` field. */
  private idSeen = false;

  constructor(
    private readonly onMessage: (message: SseMessage) => void,
    private readonly onRetry: (ms: number) => void = () => {},
    initialLastEventId = "",
  ) {
    this.lastEventId = initialLastEventId;
    this.idBuffer = initialLastEventId;
  }

  /** Sets the last event id (between events: the stream said where it starts). */
  setLastEventId(id: string): void {
    this.lastEventId = id;
    this.idBuffer = id;
  }

  /** Feeds bytes (decoded as a UTF-8 stream) or already-decoded text. */
  push(chunk: Uint8Array | string): void {
    let text: string;
    if (typeof chunk === "string") {
      text = chunk;
      if (this.atStart && text.length > 0) {
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
        this.atStart = false;
      }
    } else {
      // The decoder drops a leading BOM once per stream (ignoreBOM = false), keeps later ones.
      text = this.decoder.decode(chunk, { stream: true });
      if (chunk.length > 0) this.atStart = false;
    }
    this.feed(text);
  }

  /**
   * The stream ended. Flushes the decoder; an unterminated last line and an event without its
   * closing blank line are discarded, as the standard says.
   */
  end(): void {
    this.feed(this.decoder.decode());
    this.pending = "";
    this.data = "";
    this.eventType = "";
  }

  private feed(text: string): void {
    if (text.length === 0) return;
    let start = 0;
    if (this.skipLF) {
      this.skipLF = false;
      if (text.charCodeAt(0) === LF) start = 1;
    }
    const len = text.length;
    let i = start;
    while (i < len) {
      const c = text.charCodeAt(i);
      if (c !== CR && c !== LF) {
        i++;
        continue;
      }
      let line = text.slice(start, i);
      if (this.pending.length > 0) {
        line = this.pending + line;
        this.pending = "";
      }
      if (c === CR) {
        if (i + 1 < len) {
          if (text.charCodeAt(i + 1) === LF) i++;
        } else {
          this.skipLF = true;
        }
      }
      i++;
      start = i;
      this.line(line);
    }
    if (start < len) this.pending += text.slice(start);
  }

  private line(line: string): void {
    if (line.length === 0) {
      this.dispatch();
      return;
    }
    const colon = line.indexOf(":");
    if (colon === 0) return; // comment
    let field: string;
    let value: string;
    if (colon < 0) {
      field = line;
      value = "";
    } else {
      field = line.slice(0, colon);
      value = line.charCodeAt(colon + 1) === 0x20 ? line.slice(colon + 2) : line.slice(colon + 1);
    }
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data += value + "\n";
        break;
      case "id":
        if (value.indexOf("\0") < 0) {
          this.idBuffer = value;
          this.idSeen = true;
        }
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.onRetry(parseInt(value, 10));
        break;
      default:
      // Unknown fields are ignored.
    }
  }

  private dispatch(): void {
    this.lastEventId = this.idBuffer;
    const hasId = this.idSeen;
    this.idSeen = false;
    if (this.data === "") {
      this.eventType = "";
      return;
    }
    const data = this.data.slice(0, -1); // a non-empty buffer always ends in LF
    const type = this.eventType || "message";
    this.data = "";
    this.eventType = "";
    this.onMessage({ type, data, lastEventId: this.lastEventId, hasId });
  }
}
