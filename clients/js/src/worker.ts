/**
 * `@ssegate/client/worker`: the SharedWorker script of `sharing: "sharedworker"`. Load it as
 * a module worker; the client does, given its URL, or give the client a function that creates
 * it so the bundler sees it:
 *
 * ```ts
 * createClient({
 *   url,
 *   sharing: "sharedworker",
 *   sharedWorker: (name) =>
 *     new SharedWorker(new URL("@ssegate/client/worker", import.meta.url), { type: "module", name }),
 * });
 * ```
 */
import { serveSharedWorker, type SharedWorkerScope } from "./hub.js";

serveSharedWorker(globalThis as unknown as SharedWorkerScope);
