import { defineConfig } from "@playwright/test";

// Every test starts its own redis-server and server (see tests/fixtures.ts),
// so tests are isolated; one worker keeps a 2-core machine responsive.
export default defineConfig({
  testDir: "./tests",
  // Measurements for docs/benchmarks.md run from scripts/bench.sh only.
  testIgnore: process.env.PF_BENCH ? [] : ["**/apply-cost.spec.ts"],
  outputDir: "./test-results",
  globalSetup: "./global-setup.ts",
  timeout: 45_000,
  expect: { timeout: 5_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  use: {
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        browserName: "chromium",
        launchOptions: {
          // Debian's Chromium; Playwright never downloads a browser here.
          executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
          args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
          ],
        },
      },
    },
  ],
});
