// A cluster of `ssegate serve` nodes for the tests of one file: a `redis-server` the harness
// starts itself (loopback, a free port, no persistence) and N gateway processes sharing its
// Redis log (same stream), each on its own free port with its own data directory.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll } from "vitest";
import { binary, freePort, launchBrowser, sleep, started } from "./harness";

/** The Redis server binary: `$REDIS_SERVER`, else Debian's. */
export function redisServerPath(): string {
  const path = process.env.REDIS_SERVER ?? "/usr/bin/redis-server";
  if (!existsSync(path)) throw new Error(`no redis-server at ${path}: apt-get install -y redis-server`);
  return path;
}

/** Stops `proc` (SIGTERM, then SIGKILL after 5 s) and waits for its exit. */
async function stopProcess(proc: ChildProcess | null, exited: Promise<void>): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

export type Resp = string | number | null | Error | Resp[];

/** The RESP2 value at `at` in `buf` and where it ends, or null while incomplete. */
function parseResp(buf: string, at: number): [Resp, number] | null {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return null;
  const line = buf.slice(at + 1, eol);
  const next = eol + 2;
  switch (buf[at]) {
    case "+":
      return [line, next];
    case "-":
      return [new Error(line), next];
    case ":":
      return [Number(line), next];
    case "$": {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.slice(next, next + len), next + len + 2];
    }
    case "*": {
      const n = Number(line);
      const items: Resp[] = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const item = parseResp(buf, pos);
        if (!item) return null;
        items.push(item[0]);
        pos = item[1];
      }
      return [n < 0 ? null : items, pos];
    }
    default:
      return [new Error(`not RESP: ${buf.slice(at, at + 40)}`), buf.length];
  }
}

/** One `redis-server` on loopback, a free port, nothing saved. */
export class Redis {
  readonly output: string[] = [];
  private constructor(
    readonly port: number,
    private readonly proc: ChildProcess,
    private readonly exited: Promise<void>,
  ) {}

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<Redis> {
    const port = await freePort();
    const proc = spawn(
      redisServerPath(),
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const exited = new Promise<void>((done) => proc.once("exit", () => done()));
    const redis = new Redis(port, proc, exited);
    await started(proc, redis.output, "Ready to accept connections", "redis-server");
    return redis;
  }

  /** One command over a fresh connection; resolves with the parsed reply (RESP2). */
  command(...args: string[]): Promise<Resp> {
    const req = `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")}`;
    return new Promise((resolveReply, reject) => {
      const sock = connect(this.port, "127.0.0.1", () => sock.write(req));
      let got = "";
      sock.on("data", (d) => {
        got += d.toString("latin1");
        const parsed = parseResp(got, 0);
        if (parsed) {
          sock.end();
          if (parsed[0] instanceof Error) reject(parsed[0]);
          else resolveReply(parsed[0]);
        }
      });
      sock.on("error", reject);
    });
  }

  stop(): Promise<void> {
    return stopProcess(this.proc, this.exited);
  }
}

/** One gateway node of the cluster (`ssegate serve --config <file>`). */
export class ClusterNode {
  private proc: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  readonly output: string[] = [];

  constructor(
    readonly nodeId: string,
    readonly port: number,
    readonly dir: string,
    private readonly config: string,
  ) {}

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async launch(): Promise<void> {
    const proc = spawn(binary(), ["serve", "--config", this.config], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    this.exited = new Promise((done) => proc.once("exit", () => done()));
    await started(proc, this.output, "ssegate listening on", `ssegate serve (${this.nodeId})`);
  }

  /** Stops the process (SIGKILL: as a crash; SIGTERM: graceful drain). */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    this.proc?.kill(signal);
    await this.exited;
    this.proc = null;
  }

  /** Whether the process still runs. */
  get running(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc, this.exited);
    this.proc = null;
  }
}

export interface ClusterOptions {
  /** How many nodes (default 2), named `node-a`, `node-b`, … */
  nodes?: number;
  /** Configuration after `[server]` and `[log]` (auth, cluster, sources…); `{redis}` is replaced by the Redis URL. */
  toml: string;
  /** More lines of `[server]`. */
  server?: string[];
}

/** A Redis and N gateway nodes on it; `stop()` ends them all and removes their files. */
export class Cluster {
  private constructor(
    readonly redis: Redis,
    readonly nodes: ClusterNode[],
    private readonly dir: string,
  ) {}

  static async start(opts: ClusterOptions): Promise<Cluster> {
    const redis = await Redis.start();
    const dir = mkdtempSync(join(tmpdir(), "ssegate-e2e-cluster-"));
    const stream = `e2e-${process.pid}-${Date.now()}`;
    const nodes: ClusterNode[] = [];
    const cluster = new Cluster(redis, nodes, dir);
    try {
      for (let i = 0; i < (opts.nodes ?? 2); i++) {
        const nodeId = `node-${String.fromCharCode(97 + i)}`;
        const port = await freePort();
        const nodeDir = join(dir, nodeId);
        const config = join(dir, `${nodeId}.toml`);
        writeFileSync(
          config,
          [
            "[server]",
            `listen = "127.0.0.1:${port}"`,
            `data_dir = ${JSON.stringify(nodeDir)}`,
            `node_id = "${nodeId}"`,
            ...(opts.server ?? []),
            "",
            "[log]",
            'kind = "redis"',
            `url = "${redis.url}"`,
            `stream = "${stream}"`,
            "",
            opts.toml.replaceAll("{redis}", redis.url),
          ].join("\n"),
        );
        const node = new ClusterNode(nodeId, port, nodeDir, config);
        nodes.push(node);
        await node.launch();
      }
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  node(id: string): ClusterNode {
    const n = this.nodes.find((x) => x.nodeId === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Everything every process printed (for failure messages). */
  output(): string {
    return [
      ...this.nodes.map((n) => `--- ${n.nodeId} ---\n${n.output.join("")}`),
      `--- redis ---\n${this.redis.output.join("")}`,
    ].join("\n");
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
    await this.redis.stop();
    await sleep(0);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A cluster (see `Cluster.start`) and a browser for the tests of one file. */
export function withCluster(opts: ClusterOptions): { readonly cluster: Cluster; readonly browser: Browser } {
  const ctx = {} as { cluster: Cluster; browser: Browser };
  beforeAll(async () => {
    ctx.cluster = await Cluster.start(opts);
    ctx.browser = await launchBrowser();
  });
  afterAll(async () => {
    await ctx.browser?.close();
    await ctx.cluster?.stop();
  });
  return ctx;
}
