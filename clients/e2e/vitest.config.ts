import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// Browser tests: each file starts its own `ssegate demo` and one headless Chromium; one file
// at a time (the machine has few cores and Chromium is heavy).
export default defineConfig({
  test: {
    root: fileURLToPath(new URL(".", import.meta.url)),
    include: ["**/*.e2e.test.ts"],
    environment: "node",
    globalSetup: ["./global-setup.ts"],
    fileParallelism: false,
    pool: "forks",
    poolOptions: { forks: { singleFork: true } },
    testTimeout: 90_000,
    hookTimeout: 60_000,
  },
});
