import type { ClientOptions } from "@ssegate/client";

/**
 * `?sharing=sharedworker` (or `leader`, `none`) in the page's URL picks how the tabs of a user
 * share the stream; without it, the client's default (a leader tab). The SharedWorker script
 * is `@ssegate/client/worker`: written as `new SharedWorker(new URL(…, import.meta.url))` so
 * Vite bundles it into `dist/assets/` (which `ssegate demo` serves).
 */
export function sharingOptions(search: string): Partial<ClientOptions> {
  const mode = new URLSearchParams(search).get("sharing");
  if (mode === "sharedworker") {
    return {
      sharing: "sharedworker",
      sharedWorker: (name) =>
        new SharedWorker(new URL("@ssegate/client/worker", import.meta.url), { type: "module", name }),
    };
  }
  if (mode === "leader" || mode === "none") return { sharing: mode };
  return {};
}
