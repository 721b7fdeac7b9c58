// `ssegate serve` (not the demo) for the tests of one file, and HS256 tokens signed with
// node's crypto. Kept apart from harness.ts, which the global setup imports.
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll } from "vitest";
import { binary, freePort, launchBrowser, sleep, started } from "./harness";

/**
 * One `ssegate serve --config <file>` process on a free loopback port with its own data
 * directory (file log); `restart()` stops it and starts it again on the same port and data.
 */
export class Serve {
  private proc: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  readonly output: string[] = [];

  private constructor(
    readonly port: number,
    readonly dataDir: string,
    private readonly config: string,
  ) {}

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /**
   * `server`: more lines of `[server]` (this writes `listen` and `data_dir`, and `[log]`);
   * `toml`: the rest of the configuration.
   */
  static async start(toml: string, server: string[] = []): Promise<Serve> {
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), "ssegate-e2e-serve-"));
    const config = join(dataDir, "ssegate.toml");
    const serve = new Serve(port, join(dataDir, "data"), config);
    writeFileSync(
      config,
      [
        "[server]",
        `listen = "127.0.0.1:${port}"`,
        `data_dir = ${JSON.stringify(serve.dataDir)}`,
        ...server,
        "",
        "[log]",
        'kind = "file"',
        "",
        toml,
      ].join("\n"),
    );
    await serve.launch();
    return serve;
  }

  private async launch(): Promise<void> {
    const proc = spawn(binary(), ["serve", "--config", this.config], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    this.exited = new Promise((done) => proc.once("exit", () => done()));
    await started(proc, this.output, "ssegate listening on", "ssegate serve");
  }

  /** Stops the process (SIGKILL: as a crash; SIGTERM: graceful drain). */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    this.proc?.kill(signal);
    await this.exited;
    this.proc = null;
  }

  /** Starts the process again (after `kill`) on the same port and data directory. */
  async relaunch(): Promise<void> {
    this.output.push("--- restart ---\n");
    await this.launch();
  }

  async stop(): Promise<void> {
    if (this.proc) {
      this.proc.kill("SIGTERM");
      const killed = sleep(5000).then(() => this.proc?.kill("SIGKILL"));
      await Promise.race([this.exited, killed]);
      await this.exited;
    }
    rmSync(join(this.dataDir, ".."), { recursive: true, force: true });
  }
}

/** A gateway started with `toml` (and `server` lines, see `Serve.start`) and a browser for the tests of one file. */
export function withServe(toml: string, server: string[] = []): { readonly serve: Serve; readonly browser: Browser } {
  const ctx = {} as { serve: Serve; browser: Browser };
  beforeAll(async () => {
    ctx.serve = await Serve.start(toml, server);
    ctx.browser = await launchBrowser();
  });
  afterAll(async () => {
    await ctx.browser?.close();
    await ctx.serve?.stop();
  });
  return ctx;
}

const b64url = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/** A compact JWS (HS256) of `claims`. */
export function hs256(claims: object, secret: string): string {
  const input = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}
