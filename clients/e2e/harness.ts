/**
 * What the browser tests share: a real `ssegate demo` process per test file (own free port,
 * own data directory, fast simulated workload), headless Chromium through playwright-core,
 * and readers for what a page shows.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, "../..");
export const artifacts = join(here, "artifacts");

/** The gateway binary: `$SSEGATE_BIN`, else target/debug/ssegate, else target/release/ssegate. */
export function binary(): string {
  const candidates = process.env.SSEGATE_BIN
    ? [process.env.SSEGATE_BIN]
    : [join(repo, "target/debug/ssegate"), join(repo, "target/release/ssegate")];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`no ssegate binary at ${candidates.join(" or ")}: run \`cargo build --bin ssegate\` first`);
  }
  return found;
}

/** The built demo app: `$SSEGATE_DEMO_DIR`, else demo/dist. */
export function webDir(): string {
  const dir = process.env.SSEGATE_DEMO_DIR ?? join(repo, "demo/dist");
  if (!existsSync(join(dir, "index.html"))) {
    throw new Error(`the demo app is not built in ${dir}: run \`cd demo && npm ci && npm run build\``);
  }
  return dir;
}

export function chromiumPath(): string {
  const path = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(path)) throw new Error(`no Chromium at ${path}: apt-get install -y chromium`);
  return path;
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolvePort(port));
    });
  });
}

/**
 * Resolves once `proc` prints `marker` on its standard output — in this run's output only
 * (after a restart, the previous run's line is still in `output`); fails when it exits first
 * or has not printed it within 20 s. Everything it prints is kept in `output`.
 */
export function started(proc: ChildProcess, output: string[], marker: string, what: string): Promise<void> {
  const keep = (chunk: Buffer) => output.push(chunk.toString());
  proc.stderr!.on("data", keep);
  let stdout = "";
  return new Promise<void>((ready, fail) => {
    const timer = setTimeout(() => fail(new Error(`${what} did not start:\n${output.join("")}`)), 20_000);
    proc.stdout!.on("data", (chunk: Buffer) => {
      keep(chunk);
      stdout += chunk.toString();
      if (stdout.includes(marker)) {
        clearTimeout(timer);
        ready();
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`${what} exited (${code}):\n${output.join("")}`));
    });
  });
}

export interface DemoOptions {
  /** `--tick-ms`: one step of each simulated pipeline this often (0: no workload). */
  tickMs?: number;
  /** `--retention-events`. */
  retentionEvents?: number;
}

/** One `ssegate demo` process; `restart()` kills it and starts it again on the same port and data. */
export class Demo {
  private proc: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  readonly output: string[] = [];
  private token: string | null = null;

  private constructor(
    readonly port: number,
    readonly dataDir: string,
    private readonly opts: DemoOptions,
  ) {}

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(opts: DemoOptions = {}): Promise<Demo> {
    const demo = new Demo(await freePort(), mkdtempSync(join(tmpdir(), "ssegate-e2e-")), opts);
    await demo.launch();
    return demo;
  }

  private async launch(): Promise<void> {
    const args = [
      "demo",
      "--listen", `127.0.0.1:${this.port}`,
      "--data-dir", this.dataDir,
      "--tick-ms", String(this.opts.tickMs ?? 100),
      "--web-dir", webDir(),
      "--no-build",
    ];
    if (this.opts.retentionEvents) args.push("--retention-events", String(this.opts.retentionEvents));
    const proc = spawn(binary(), args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    this.exited = new Promise((done) => proc.once("exit", () => done()));
    await started(proc, this.output, "ssegate demo listening on", "ssegate demo");
  }

  /** Stops the process (SIGKILL: as a crash; SIGTERM: graceful, streams get `closing`). */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    this.proc?.kill(signal);
    await this.exited;
    this.proc = null;
  }

  async restart(signal: NodeJS.Signals = "SIGKILL", downMs = 500): Promise<void> {
    await this.kill(signal);
    await sleep(downMs);
    await this.launch();
  }

  async stop(): Promise<void> {
    if (this.proc) {
      this.proc.kill("SIGTERM");
      const killed = sleep(5000).then(() => this.proc?.kill("SIGKILL"));
      await Promise.race([this.exited, killed]);
      await this.exited;
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** GET an admin endpoint with the demo's admin token. */
  async admin<T>(path: string): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      this.token ??= ((await (await fetch(`${this.url}/demo/admin-token`)).json()) as { token: string }).token;
      const res = await fetch(`${this.url}${path}`, { headers: { Authorization: `Bearer ${this.token}` } });
      if (res.ok) return (await res.json()) as T;
      this.token = null;
      if (attempt >= 2) throw new Error(`${path}: ${res.status} ${await res.text()}`);
    }
  }

  async connections(user: string): Promise<{ connection_id: string; channels: string[] }[]> {
    return (await this.admin<{ connections: { connection_id: string; channels: string[] }[] }>(
      `/v1/connections?user=${encodeURIComponent(user)}`,
    )).connections;
  }
}

/** Headless Chromium of the machine (never a downloaded one); a fresh profile every launch. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Uncaught errors of every page of a context: a test ends by checking there were none. */
export function pageErrors(context: BrowserContext): string[] {
  const errors: string[] = [];
  const watch = (p: Page) => p.on("pageerror", (e) => errors.push(`${p.url()}: ${e.message}`));
  context.pages().forEach(watch);
  context.on("page", watch);
  return errors;
}

/** Signs in as `user` in `context` and opens `path` (e.g. `/#/logs/w1/f1`) once connected. */
export async function signIn(context: BrowserContext, demo: Demo, user: string, path = "/"): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${demo.url}/demo/login?user=${user}&next=${encodeURIComponent(path)}`);
  await connected(page);
  return page;
}

/** Opens another tab of the signed-in user. */
export async function openTab(context: BrowserContext, demo: Demo, path = "/"): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${demo.url}${path}`);
  await connected(page);
  return page;
}

export async function connected(page: Page): Promise<void> {
  await page.locator('[data-testid="connection"][data-status="connected"]').waitFor({ timeout: 20_000 });
}

/** The sequence numbers of the log lines a page shows for `channel`, in page order. */
export function seqs(page: Page, channel: string): Promise<number[]> {
  return page
    .locator(`[data-channel="${channel}"] [data-seq]`)
    .evaluateAll((els) => els.map((e) => Number((e as HTMLElement).dataset.seq)));
}

/** The viewer's own count of its lines: none missing, none twice. */
export async function expectStats(page: Page, channel: string): Promise<void> {
  const stats = page.locator(`[data-channel="${channel}"] [data-testid="continuity"]`);
  const read = async () => ({
    missing: await stats.getAttribute("data-missing"),
    duplicates: await stats.getAttribute("data-duplicates"),
    text: await stats.textContent(),
  });
  const s = await read();
  // Thrown, not vitest's `expect`: the global setup imports this file.
  if (s.missing !== "0" || s.duplicates !== "0" || !/ 0 missing · 0 duplicated/.test(s.text ?? "")) {
    throw new Error(`${channel}: the viewer counts ${s.missing} missing, ${s.duplicates} twice (${s.text})`);
  }
}

/** The newest line of `channel`, over the history endpoint (the page's session cookie
 * authorizes it like a subscription); 0 when it has none yet. */
export function newestLine(page: Page, channel: string): Promise<number> {
  return page.evaluate(async (c) => {
    const res = await fetch(`/v1/channels/${encodeURIComponent(c)}/history?limit=1`);
    const body = (await res.json()) as { events: { data: { seq: number } }[] };
    return body.events[0]?.data.seq ?? 0;
  }, channel);
}

/** Lines must be consecutive: none missing, none twice, in order. */
export function expectConsecutive(list: number[], what: string): void {
  const bad = list.findIndex((s, i) => i > 0 && s !== list[i - 1]! + 1);
  if (bad > 0) {
    const around = list.slice(Math.max(0, bad - 3), bad + 3).join(", ");
    throw new Error(`${what}: line #${list[bad - 1]} is followed by #${list[bad]} (… ${around} …)`);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `read` until `ok` holds for its value (or throws after `timeoutMs`). */
export async function until<T>(
  read: () => Promise<T>,
  ok: (value: T) => boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = await read();
  while (!ok(value)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(value)?.slice(-300)}`);
    await sleep(100);
    value = await read();
  }
  return value;
}
