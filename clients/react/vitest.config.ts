import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // Test against the client's sources: no build step before `npm test`.
    alias: {
      "@ssegate/client": fileURLToPath(new URL("../js/src/index.ts", import.meta.url)),
    },
  },
  esbuild: { jsx: "automatic" },
  test: {
    include: ["test/**/*.test.{ts,tsx}"],
    environment: "jsdom",
  },
});
