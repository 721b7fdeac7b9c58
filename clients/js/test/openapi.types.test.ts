/**
 * The client's request and response types against the gateway's OpenAPI document.
 *
 * `test/openapi.json` is the document `GET /v1/openapi.json` serves (tests/openapi.rs in the
 * Rust crate fails when it is not current; `SSEGATE_UPDATE_OPENAPI=1 cargo nextest run --test
 * openapi` rewrites it). `test/openapi.gen.ts` is generated from it by openapi-typescript
 * (`npm run openapi:types`); the first test fails when it is stale. The type-level checks below
 * fail to compile when a type of the client and the document's disagree: the second test
 * compiles this file with the TypeScript compiler (so `npm test` catches it, as does
 * `npm run typecheck`).
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import ts from "typescript";
import openapiTS, { astToString, COMMENT_HEADER } from "openapi-typescript";
import { describe, expect, it } from "vitest";
import type { components, paths } from "./openapi.gen.js";
import type { BroadcastMessage, ConnectionState, GapInfo, RealtimeEvent } from "../src/index.js";
import type { RealtimeError } from "../src/errors.js";

// ---- type-level checks --------------------------------------------------------------------------

type Schemas = components["schemas"];
/** `true` when every `A` is a `B`. */
type Assignable<A, B> = [A] extends [B] ? true : false;
/** `true` when `A` and `B` are the same type. */
type Same<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/** Compiles only when given `true` for every check. */
function check<T extends true[]>(..._: T): void {}

type Json<Op> = Op extends { content: { "application/json": infer B } } ? B : never;
type SubscriptionsOp = paths["/v1/connections/{id}/subscriptions"]["post"];

/** What the transport sends to change a stream's channels (src/transport.ts `sync`). */
type ClientSubscriptionChange = { add?: string[]; remove?: string[]; since?: string; history?: number };
/** What it reads of the answer. */
type ClientSubscriptionAnswer = { channels?: unknown };
/** What it reads of a `connected` event, a `gap` and a `closing`. */
type ClientConnected = {
  connection_id?: unknown;
  channels?: unknown;
  heartbeat_ms?: unknown;
  last_event_id?: unknown;
};
type ClientGap = { last_event_id?: unknown; oldest_id?: unknown; channel?: unknown };
/** What it reads of a long-poll answer. */
type ClientPoll = { events?: unknown; last_event_id?: unknown; gap?: unknown; oldest_id?: unknown };
/** What it reads of an error (src/errors.ts `readError`). */
type ClientError = { error?: { code?: unknown; message?: unknown; channels?: unknown } };

check(
  // Events: the envelope is exactly the client's RealtimeEvent.
  true as Same<RealtimeEvent<unknown>, Schemas["Envelope"]>,
  true as Same<BroadcastMessage<unknown>, Schemas["BroadcastMessage"]>,
  true as Assignable<Schemas["PollResponse"]["events"][number], RealtimeEvent>,
  // Subscription changes: what the client sends is a valid request; the answer has what it reads.
  true as Assignable<ClientSubscriptionChange, Json<SubscriptionsOp["requestBody"]>>,
  true as Assignable<Json<SubscriptionsOp["responses"][200]>, ClientSubscriptionAnswer>,
  true as Same<Json<SubscriptionsOp["responses"][200]>["channels"], string[]>,
  // Stream control events.
  true as Assignable<Schemas["ConnectedEvent"], ClientConnected>,
  true as Same<Schemas["ConnectedEvent"]["connection_id"], string>,
  true as Same<Schemas["ConnectedEvent"]["heartbeat_ms"], number>,
  true as Same<Schemas["ConnectedEvent"]["last_event_id"], string>,
  true as Assignable<Schemas["GapEvent"], ClientGap>,
  true as Same<Schemas["GapEvent"]["oldest_id"], GapInfo["oldestId"]>,
  true as Same<Schemas["GapEvent"]["channel"], GapInfo["channel"]>,
  // The closing reasons the client shows as `closed` are closing reasons of the gateway.
  true as Assignable<
    Exclude<Extract<ConnectionState, { status: "closed" }>["reason"], "client" | "no_content">,
    Schemas["ClosingEvent"]["reason"]
  >,
  // Long-polls.
  true as Assignable<Json<paths["/v1/poll"]["get"]["responses"][200]>, ClientPoll>,
  true as Same<Schemas["PollResponse"]["oldest_id"], string | null | undefined>,
  // Errors: the body the client reads, and the fields of RealtimeError.
  true as Assignable<Schemas["Error"], ClientError>,
  true as Same<Schemas["Error"]["error"]["code"], RealtimeError["code"]>,
  true as Same<Schemas["Error"]["error"]["channels"], RealtimeError["channels"]>,
  true as Assignable<Json<SubscriptionsOp["responses"][403]>, Schemas["Error"]>,
);

// ---- the checks run ----------------------------------------------------------------------------

const here = dirname(fileURLToPath(import.meta.url));

describe("the OpenAPI document and the client", () => {
  it("test/openapi.gen.ts is generated from test/openapi.json (npm run openapi:types)", async () => {
    const doc = JSON.parse(readFileSync(join(here, "openapi.json"), "utf8"));
    expect(doc.openapi).toMatch(/^3\.1\./);
    const generated = COMMENT_HEADER + astToString(await openapiTS(doc));
    const committed = readFileSync(join(here, "openapi.gen.ts"), "utf8");
    expect(committed === generated, "test/openapi.gen.ts is stale: run `npm run openapi:types`").toBe(
      true,
    );
  });

  it("the client's types are assignable to the document's (this file compiles)", () => {
    const configPath = join(here, "..", "tsconfig.test.json");
    const config = ts.readConfigFile(configPath, (p) => ts.sys.readFile(p));
    const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, dirname(configPath));
    const self = fileURLToPath(import.meta.url);
    const program = ts.createProgram([self], { ...parsed.options, noEmit: true });
    const problems = ts
      .getPreEmitDiagnostics(program)
      .map((d) => ts.formatDiagnostic(d, {
        getCanonicalFileName: (f) => f,
        getCurrentDirectory: () => here,
        getNewLine: () => "\n",
      }));
    expect(problems).toEqual([]);
  }, 120_000);
});
