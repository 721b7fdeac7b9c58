// The packages as users get them: `npm pack` of @ssegate/client and @ssegate/react, the
// tarballs installed (`npm install <tarball>`, everything else from the npm registry) into a
// fresh Vite + React app and a fresh Next.js App Router app in a temporary directory, both
// built for production (`tsc --noEmit && vite build`; `next build`, which type-checks too)
// and served (`vite preview`; `next start`), then opened in Chromium against a real
// `ssegate serve` (CORS allows the two apps' origins): events published to the gateway
// arrive in the page through the provider and `useEvents`. The Next.js page is
// server-rendered first (plain HTTP: the SSR markup, and the server still running), then
// hydrates and receives events.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { binary, chromiumPath, freePort, launchBrowser, sleep, until } from "../e2e/harness";
import { hs256, Serve } from "../e2e/with-serve";

const here = dirname(fileURLToPath(import.meta.url));
const clients = join(here, "..");
const SECRET = randomBytes(32).toString("hex");
const exp = () => Math.floor(Date.now() / 1000) + 3600;
const USER = "pack-user";
const subscriberToken = () =>
  hs256({ sub: USER, exp: exp(), ssegate: { subscribe: ["pack:**"], publish: [], admin: false } }, SECRET);
const publisherToken = () =>
  hs256({ sub: "pack-publisher", exp: exp(), ssegate: { subscribe: [], publish: ["pack:**"], admin: true } }, SECRET);

/** Runs `cmd` to its end: its exit code, standard output, and everything it printed. */
function exec(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ code: number | null; stdout: string; all: string }>((done, fail) => {
    const proc = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let all = "";
    proc.stdout.on("data", (c: Buffer) => {
      stdout += c.toString();
      all += c.toString();
    });
    proc.stderr.on("data", (c: Buffer) => (all += c.toString()));
    proc.once("error", fail);
    proc.once("exit", (code) => done({ code, stdout, all }));
  });
}

/** Runs `cmd` to its end and returns its standard output; rejects with everything it printed unless it exits 0. */
async function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await exec(cmd, args, cwd, env);
  if (r.code !== 0) throw new Error(`\`${cmd} ${args.join(" ")}\` in ${cwd} exited ${r.code}:\n${r.all}`);
  return r.stdout;
}

/** A long-running server of an app (its own process group, ended with it). */
class AppServer {
  readonly output: string[] = [];
  readonly exited: Promise<void>;
  private constructor(private readonly proc: ChildProcess) {
    this.exited = new Promise((done) => proc.once("exit", () => done()));
    proc.stdout!.on("data", (c: Buffer) => this.output.push(c.toString()));
    proc.stderr!.on("data", (c: Buffer) => this.output.push(c.toString()));
  }

  static async start(args: string[], cwd: string, url: string, env: NodeJS.ProcessEnv = {}): Promise<AppServer> {
    const proc = spawn(process.execPath, args, {
      cwd,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const server = new AppServer(proc);
    await until(
      async () => {
        if (proc.exitCode !== null) throw new Error(`${args.join(" ")} exited (${proc.exitCode}):\n${server.output.join("")}`);
        return fetch(url).then((r) => r.status, () => 0);
      },
      (status) => status === 200,
      `${args.join(" ")} to serve ${url}`,
      60_000,
    );
    return server;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    process.kill(-this.proc.pid!, "SIGTERM");
    const killed = sleep(5000).then(() => this.running && process.kill(-this.proc.pid!, "SIGKILL"));
    await Promise.race([this.exited, killed]);
  }
}

/** One `npm pack --json` entry. */
interface Packed {
  name: string;
  filename: string;
  files: { path: string }[];
}

describe("the packed packages in fresh apps", () => {
  const work = mkdtempSync(join(tmpdir(), "ssegate-pack-"));
  const ports = { vite: 0, next: 0 };
  const apps = { vite: join(work, "vite"), next: join(work, "next"), jest: join(work, "jest-cjs") };
  const servers: AppServer[] = [];
  let packed: Packed[] = [];
  let serve: Serve;
  let browser: Browser;
  const timings: string[] = [];

  const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    const t0 = Date.now();
    const r = await f();
    timings.push(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return r;
  };

  beforeAll(async () => {
    // What this needs from the machine, before minutes of installs.
    binary();
    chromiumPath();

    // Pack (prepack: a clean tsc -b of both).
    const json = await timed("npm pack", () =>
      run("npm", ["pack", "-w", "@ssegate/client", "-w", "@ssegate/react", "--pack-destination", work, "--json"], clients),
    );
    packed = JSON.parse(json) as Packed[];
    const tarballs = packed.map((p) => join(work, p.filename));

    // Fresh projects: the fixtures' files, then `npm install <tarballs>` (which installs
    // their other dependencies too).
    for (const app of ["vite", "next", "jest"] as const) {
      cpSync(join(here, "fixtures", app === "jest" ? "jest-cjs" : app), apps[app], { recursive: true });
    }
    const npmInstall = (dir: string) =>
      run("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", ...tarballs], dir);
    await timed("npm install (three projects, in parallel)", () => Promise.all(Object.values(apps).map(npmInstall)));

    // Production builds. No network beyond the npm registry: Next's SWC is the npm package
    // @next/swc-linux-x64-gnu, telemetry off.
    const nextEnv = { NEXT_TELEMETRY_DISABLED: "1" };
    await timed("tsc --noEmit && vite build", () => run("npm", ["run", "build", "--silent"], apps.vite));
    await timed("next build", () => run("npm", ["run", "build", "--silent"], apps.next, nextEnv));

    // The gateway (CORS for both apps' origins), then the apps' production servers.
    ports.vite = await freePort();
    ports.next = await freePort();
    serve = await Serve.start(
      [
        "[auth]",
        `jwt_secret = "${SECRET}"`,
        "",
        "[cors]",
        `allowed_origins = ["http://127.0.0.1:${ports.vite}", "http://127.0.0.1:${ports.next}"]`,
      ].join("\n"),
    );
    await timed("servers up", async () => {
      servers.push(
        await AppServer.start(
          ["node_modules/vite/bin/vite.js", "preview", "--host", "127.0.0.1", "--port", String(ports.vite), "--strictPort"],
          apps.vite,
          `http://127.0.0.1:${ports.vite}/`,
        ),
      );
      servers.push(
        await AppServer.start(
          ["node_modules/next/dist/bin/next", "start", "-H", "127.0.0.1", "-p", String(ports.next)],
          apps.next,
          `http://127.0.0.1:${ports.next}/`,
          nextEnv,
        ),
      );
    });
    browser = await launchBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await Promise.all(servers.map((s) => s.stop()));
    await serve?.stop();
    rmSync(work, { recursive: true, force: true });
    console.log(`pack test timings:\n  ${timings.join("\n  ")}`);
  });

  /** The channels of USER's connections, from the admin API. */
  const subscribed = async (): Promise<string[]> => {
    const res = await fetch(`${serve.url}/v1/connections?user=${USER}`, {
      headers: { Authorization: `Bearer ${publisherToken()}` },
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { connections: { channels: string[] }[] };
    return body.connections.flatMap((c) => c.channels);
  };

  async function publish(channel: string, texts: string[]): Promise<string[]> {
    const res = await fetch(`${serve.url}/v1/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${publisherToken()}`, "Content-Type": "application/json" },
      body: JSON.stringify(texts.map((text, n) => ({ channel, type: "pack.line", data: { n, text } }))),
    });
    const body = await res.text();
    expect(res.status, body).toBe(200);
    return (JSON.parse(body) as { ids: string[] }).ids;
  }

  /** Errors of the page: uncaught ones and console errors (hydration mismatches among them). */
  function watch(page: Page): string[] {
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
    page.on("console", (m) => {
      // favicon.ico: neither app has one.
      if (m.type() === "error" && !(m.text().startsWith("Failed to load resource") && m.location().url.endsWith("/favicon.ico")))
        errors.push(`console: ${m.text()}`);
    });
    return errors;
  }

  /** Opens the app's page, waits for its subscription, publishes, and reads the lines it shows. */
  async function receives(origin: string, channel: string): Promise<string[]> {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = watch(page);
    const qs = new URLSearchParams({ gateway: serve.url, token: subscriberToken(), channel });
    await page.goto(`${origin}/?${qs}`);
    await until(() => page.getByTestId("state").textContent(), (s) => s === "connected", `${channel}: connected`);
    await until(subscribed, (chs) => chs.includes(channel), `${channel}: subscribed on the gateway`);
    const texts = ["first line", "second <b>line</b>", "third line"];
    await publish(channel, texts);
    const lines = page.locator('[data-testid="events"] li');
    const shown = await until(
      () => lines.evaluateAll((els) => els.map((e) => e.textContent ?? "")),
      (got) => got.length >= texts.length,
      `${channel}: the published events in the page`,
    );
    expect(shown).toEqual(texts);
    expect(errors).toEqual([]);
    await context.close();
    return shown;
  }

  it("packs dist, sources, README and LICENSE, and no tests", () => {
    expect(packed.map((p) => p.name).sort()).toEqual(["@ssegate/client", "@ssegate/react"]);
    for (const p of packed) {
      const files = p.files.map((f) => f.path);
      for (const f of ["package.json", "README.md", "LICENSE", "dist/index.js", "dist/index.d.ts", "src/index.ts"]) {
        expect(files, `${p.name}: ${f}`).toContain(f);
      }
      expect(files.filter((f) => !/^(dist|src)\/|^(package\.json|README\.md|LICENSE)$/.test(f)), p.name).toEqual([]);
      expect(files.filter((f) => /test|tsbuildinfo/.test(f)), p.name).toEqual([]);
      // Every entry point of `exports` is in the tarball.
      const pkg = JSON.parse(readFileSync(join(apps.vite, "node_modules", p.name, "package.json"), "utf8")) as {
        exports: Record<string, string | Record<string, string>>;
      };
      for (const target of Object.values(pkg.exports).flatMap((t) => (typeof t === "string" ? [t] : Object.values(t)))) {
        expect(existsSync(join(apps.vite, "node_modules", p.name, target)), `${p.name}: ${target}`).toBe(true);
      }
    }
    expect(readFileSync(join(apps.vite, "node_modules/@ssegate/client/LICENSE"), "utf8")).toContain("Apache License");
    // The React entry is a client module for React Server Components bundlers (Next.js): the
    // directive must be the built file's first statement.
    expect(readFileSync(join(apps.vite, "node_modules/@ssegate/react/dist/index.js"), "utf8")).toMatch(/^"use client";/);
  });

  it("resolves from CommonJS `require` as well (Node's require of ES modules)", () => {
    const req = createRequire(join(apps.next, "package.json"));
    expect(typeof (req("@ssegate/client") as { createClient: unknown }).createClient).toBe("function");
    expect(typeof (req("@ssegate/react") as { RealtimeProvider: unknown }).RealtimeProvider).toBe("function");
  });

  it("Jest (CommonJS): a clear error without configuration, passes with transformIgnorePatterns", async () => {
    const jest = ["node_modules/jest/bin/jest.js", "--ci"];
    // Jest's defaults (`--config {}`): Node 24.9+ lets Jest require ES modules; before, Jest
    // says which file is an ES module and what to configure.
    const bare = await exec(process.execPath, [...jest, "--config", "{}"], apps.jest);
    if (bare.code !== 0) {
      expect(bare.all).toContain("Must use import to load ES Module");
      expect(bare.all).toContain("node_modules/@ssegate/client/dist/index.js");
      expect(bare.all).toContain("transformIgnorePatterns");
    }
    // The fixture's jest.config.cjs: the packages transformed with the project's Babel config.
    await run(process.execPath, jest, apps.jest);
  });

  it("Vite + React: events published to the gateway arrive in the page", async () => {
    await receives(`http://127.0.0.1:${ports.vite}`, "pack:vite");
  });

  it("Next.js App Router: server-rendered, then hydrated, and events arrive in the page", async () => {
    const origin = `http://127.0.0.1:${ports.next}`;
    const next = servers[1]!;
    const qs = new URLSearchParams({ gateway: serve.url, token: subscriberToken(), channel: "pack:next-ssr" });
    const res = await fetch(`${origin}/?${qs}`);
    const html = await res.text();
    expect(res.status, html).toBe(200);
    // The server component and the client component's first render, as markup.
    expect(html).toContain('<h1 data-testid="title">ssegate on Next.js</h1>');
    expect(html).toMatch(/<section data-testid="live" data-channel="pack:next-ssr"><p data-testid="state">idle<\/p><ul data-testid="events"><\/ul><\/section>/);
    expect(next.running, next.output.join("")).toBe(true);
    expect(next.output.join("")).not.toMatch(/window is not defined|ReferenceError|TypeError|Error:/);

    // Hydrated: the state leaves the server's `idle` for `connected`, and no hydration error.
    await receives(origin, "pack:next");
    expect(next.running, next.output.join("")).toBe(true);
    expect(next.output.join("")).not.toMatch(/window is not defined|ReferenceError|TypeError|Error:/);
  });
});
