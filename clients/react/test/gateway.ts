/**
 * The setup the React tests share: the client package's fake gateway and fake time (its
 * `useFakeGateway`), one client of it for the test, and React Testing Library's cleanup.
 */

import { act, cleanup } from "@testing-library/react";
import { afterEach, beforeEach } from "vitest";
import type { RealtimeClient } from "@ssegate/client";
import { settle, useFakeGateway, type FakeServer } from "../../js/test/fakes.js";

export interface TestClient {
  /** The running test's gateway. */
  readonly server: FakeServer;
  /** The running test's client of it (`clientOptions`), closed after the test. */
  readonly client: RealtimeClient;
}

/**
 * Registers the hooks: before each test fake time, a new gateway and a client of it; after it,
 * the rendered trees unmounted, then the client closed, then real timers.
 */
export function useTestClient(): TestClient {
  const gw = useFakeGateway();
  let client: RealtimeClient | undefined;
  beforeEach(() => {
    client = gw.client();
  });
  // Registered after useFakeGateway's hooks, so it runs before them (vitest runs after-hooks
  // as a stack): the components unmount while their client is still open.
  afterEach(() => {
    cleanup();
  });
  return {
    get server() {
      return gw.server;
    },
    get client() {
      if (!client) throw new Error("the test client exists inside a test only");
      return client;
    },
  };
}

/** Lets the client's requests and the stream's frames through, inside act(). */
export async function flush(): Promise<void> {
  await act(async () => {
    await settle();
  });
}
