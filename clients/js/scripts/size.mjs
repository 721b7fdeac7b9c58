// Prints the size of the runtime bundle: everything `import { createClient } from
// "@ssegate/client"` pulls in, bundled and minified by esbuild, raw and gzipped; and the
// SharedWorker script (`@ssegate/client/worker`), which only `sharing: "sharedworker"` loads.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const entry = fileURLToPath(new URL("../src/index.ts", import.meta.url));

async function measure(label, contents) {
  const out = await build({
    stdin: { contents, resolveDir: fileURLToPath(new URL("../src", import.meta.url)), loader: "ts" },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    write: false,
  });
  const code = out.outputFiles[0].contents;
  const gz = gzipSync(code, { level: 9 }).length;
  console.log(`${label}: ${code.length} bytes minified, ${gz} bytes gzipped`);
}

await measure("whole package (every export)", `export * from ${JSON.stringify(entry)};`);
await measure("createClient only", `export { createClient } from ${JSON.stringify(entry)};`);
await measure(
  "worker script (@ssegate/client/worker)",
  `import ${JSON.stringify(fileURLToPath(new URL("../src/worker.ts", import.meta.url)))};`,
);
