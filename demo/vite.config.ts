import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
// `npm run dev` serves the app with hot reload and sends the rest to a running `ssegate demo`.
const gateway = process.env.SSEGATE_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  resolve: {
    // The client and the React bindings from their sources: no build of clients/ first, and
    // the demo always runs the code next to it.
    alias: [
      { find: /^@ssegate\/client$/, replacement: here("../clients/js/src/index.ts") },
      // The SharedWorker script (`?sharing=sharedworker`), bundled into assets/ by Vite.
      { find: /^@ssegate\/client\/worker$/, replacement: here("../clients/js/src/worker.ts") },
      { find: /^@ssegate\/react$/, replacement: here("../clients/react/src/index.ts") },
    ],
    // One React for the app and the bindings (whose sources live outside this folder).
    dedupe: ["react", "react-dom"],
  },
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true, target: "es2020" },
  server: {
    proxy: {
      "/v1": gateway,
      "/demo": gateway,
      "/native.html": gateway,
    },
  },
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
