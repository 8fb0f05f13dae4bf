// Fixtures: a real redis-server and the real server binary per test, on free
// loopback ports, plus a guard that fails a test on any unexpected browser
// error (console error, uncaught exception, HTTP status >= 400).
import { test as base, expect, type Page } from "@playwright/test";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createServer, Socket } from "node:net";
import { resolve } from "node:path";

const ROOT = resolve(__dirname, "..", "..");

export const serverBinary = () => process.env.SERVER_BIN ?? `${ROOT}/target/debug/server`;
export const siteRoot = () => process.env.LEPTOS_SITE_ROOT ?? `${ROOT}/target/site`;

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => ok(port));
    });
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function answersPing(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = new Socket();
    s.setTimeout(300);
    s.once("error", () => ok(false));
    s.once("timeout", () => { s.destroy(); ok(false); });
    s.connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.once("data", (d) => { s.destroy(); ok(d.toString().startsWith("+PONG")); });
  });
}

function exited(proc: ChildProcess, ms: number): Promise<number | null> {
  return new Promise((ok) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return ok(proc.exitCode);
    const timer = setTimeout(() => { proc.kill("SIGKILL"); ok(null); }, ms);
    proc.once("exit", (code) => { clearTimeout(timer); ok(code); });
  });
}

export class Redis {
  constructor(readonly port: number, private proc: ChildProcess) {}

  static async start(): Promise<Redis> {
    const port = await freePort();
    const proc = spawn("redis-server", ["--port", `${port}`, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    await waitFor(`redis-server on ${port}`, () => answersPing(port));
    return new Redis(port, proc);
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/`;
  }

  /** Runs redis-cli against this server (from outside the app). */
  cli(...args: string[]): string {
    return execFileSync("redis-cli", ["-p", `${this.port}`, ...args], { encoding: "utf8" }).trim();
  }

  async stop() {
    this.proc.kill("SIGTERM");
    await exited(this.proc, 3_000);
  }
}

export class Server {
  private proc?: ChildProcess;
  output = "";

  constructor(
    readonly redis: Redis,
    readonly port: number,
    readonly extraArgs: string[] = [],
  ) {}

  static async start(redis: Redis, extraArgs: string[] = []): Promise<Server> {
    const server = new Server(redis, await freePort(), extraArgs);
    await server.launch();
    return server;
  }

  /** The URL of the private PostgreSQL a `--primary postgres` server started. */
  get postgresUrl(): string {
    const m = /started a private PostgreSQL at (postgres:\/\/\S+)/.exec(this.output);
    if (!m) throw new Error(`no private PostgreSQL in the server output: ${this.output}`);
    return m[1];
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async launch() {
    this.output = "";
    const proc = spawn(
      serverBinary(),
      ["--redis-url", this.redis.url, "--port", `${this.port}`, "--primary-latency-ms", "80", ...this.extraArgs],
      {
        env: {
          ...process.env,
          LEPTOS_SITE_ROOT: siteRoot(),
          LEPTOS_OUTPUT_NAME: "prefetch-demo",
          LEPTOS_SITE_PKG_DIR: "pkg",
          RUST_LOG: "info",
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    proc.stdout?.on("data", (d) => (this.output += d.toString()));
    proc.stderr?.on("data", (d) => (this.output += d.toString()));
    this.proc = proc;
    await waitFor("the server to prefetch", async () => {
      if (proc.exitCode !== null) throw new Error(`server exited: ${this.output}`);
      return this.output.includes("sync worker running");
    });
  }

  /** SIGTERM, and the exit code. */
  async stop(): Promise<number | null> {
    if (!this.proc) return null;
    const proc = this.proc;
    this.proc = undefined;
    proc.kill("SIGTERM");
    return exited(proc, 5_000);
  }
}

export type Guard = { allowStatus: number[]; allowConsole: RegExp[] };

type Fixtures = { redis: Redis; server: Server; guard: Guard; serverArgs: string[] };

export const test = base.extend<Fixtures>({
  redis: async ({}, use) => {
    const redis = await Redis.start();
    await use(redis);
    await redis.stop();
  },
  serverArgs: [[], { option: true }],
  server: async ({ redis, serverArgs }, use) => {
    const server = await Server.start(redis, serverArgs);
    await use(server);
    await server.stop();
  },
  baseURL: async ({ server }, use) => {
    await use(server.url);
  },
  guard: async ({}, use) => {
    await use({ allowStatus: [], allowConsole: [] });
  },
  page: async ({ page, guard }, use) => {
    const problems = watch(page, guard);
    await use(page);
    expect(problems, "unexpected browser errors").toEqual([]);
  },
});

/** Collects console errors, page errors and failed responses not allowed by `guard`. */
export function watch(page: Page, guard: Guard): string[] {
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    // Chromium logs every failed response too; those follow the status rules.
    const status = /status of (\d{3})/.exec(text);
    if (status && guard.allowStatus.includes(Number(status[1]))) return;
    if (!guard.allowConsole.some((re) => re.test(text))) problems.push(`console: ${text}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !guard.allowStatus.includes(r.status())) {
      problems.push(`HTTP ${r.status()} ${r.url()}`);
    }
  });
  return problems;
}

/** Opens the dashboard and waits until it is hydrated and the feed is live. */
export async function openDashboard(page: Page) {
  await page.goto("/");
  await expect(page.locator("main[data-hydrated='true']")).toBeVisible({ timeout: 20_000 });
  await expect(page.locator("#conn")).toHaveAttribute("data-state", "live");
}

export const row = (page: Page, id: string) => page.locator(`#state-table tr[data-id="${id}"]`);
export const primaryCell = (page: Page, id: string, field: string) =>
  row(page, id).locator(`td.p[data-field="${field}"]`);
export const cacheCell = (page: Page, id: string, field: string) =>
  row(page, id).locator(`td.c[data-field="${field}"]`);
export const stat = (page: Page, key: string) => page.locator(`#stats dd[data-stat="${key}"]`);
export const logEntry = (page: Page, source: string, op: string, id = "") =>
  page.locator(`#event-log tr[data-source="${source}"][data-op="${op}"]${id ? `[data-id="${id}"]` : ""}`);

export { expect };
