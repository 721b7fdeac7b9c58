import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// `npm run pack-test`: the packed packages installed into fresh apps (see pack.test.ts).
// Network-bound installs and two production builds: long hooks, one file.
export default defineConfig({
  test: {
    root: fileURLToPath(new URL(".", import.meta.url)),
    include: ["pack.test.ts"],
    environment: "node",
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 420_000,
  },
});
