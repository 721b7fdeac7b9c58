// @vitest-environment node
import { readFileSync } from "node:fs";
import ts from "typescript";
import { describe, expect, it } from "vitest";

describe('"use client"', () => {
  it("is the entry's first statement, and TypeScript's output keeps it first", () => {
    const source = readFileSync(new URL("../src/index.ts", import.meta.url), "utf8");
    expect(source.startsWith('"use client";\n')).toBe(true);
    const config = JSON.parse(readFileSync(new URL("../tsconfig.json", import.meta.url), "utf8"));
    const out = ts.transpileModule(source, {
      compilerOptions: {
        ...ts.convertCompilerOptionsFromJson(config.compilerOptions, ".").options,
        declaration: false,
        composite: false,
      },
    }).outputText;
    expect(out.startsWith('"use client";')).toBe(true);
  });
});
