import { writeFileSync } from "node:fs";
import { test, expect, openDashboard, row } from "./fixtures";

// A figure for docs/benchmarks.md, not a pass/fail timer: the main-thread
// time the page spends on one live-feed event with 1,000 rows in the table,
// from the start of its handler to the end of the reactive work it
// triggers. Leptos runs the effects a signal change schedules as one
// microtask after the handler; a microtask chained after that marks the
// end (so the browser's own style, layout and paint are not counted).
const ROWS = 1000;
const UPDATES = Number(process.env.PF_UPDATES ?? 60);

test("time to apply one feed event with 1,000 rows (printed)", async ({ page, server }) => {
  test.setTimeout(900_000);
  // Fill the primary to 1,000 records (the seed has 5).
  for (let i = 0; i < ROWS - 5; i += 1) {
    const body = new URLSearchParams({ id: `row-${String(i).padStart(4, "0")}`, name: `Row ${i}` });
    const res = await fetch(`${server.url}/add`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body,
    });
    expect(res.status).toBe(200);
  }
  await page.addInitScript(() => {
    const w = window as unknown as {
      __applyCost: { kind: string; start: number; end: number }[];
    };
    w.__applyCost = [];
    const Native = window.EventSource;
    class Timed extends Native {
      set onmessage(handler: ((ev: MessageEvent) => unknown) | null) {
        super.onmessage = handler
          ? (ev: MessageEvent) => {
              const start = performance.now();
              const kind = String(ev.data).slice(2, String(ev.data).indexOf('"', 2));
              const entry = { kind, start, end: Number.POSITIVE_INFINITY };
              w.__applyCost.push(entry);
              handler.call(this, ev);
              Promise.resolve()
                .then(() => undefined)
                .then(() => undefined)
                .then(() => (entry.end = performance.now()));
            }
          : null;
      }
      get onmessage() {
        return super.onmessage;
      }
    }
    window.EventSource = Timed as unknown as typeof EventSource;
  });
  await openDashboard(page);
  await expect(page.locator("#state-table tbody tr")).toHaveCount(ROWS);
  await page.evaluate(() => ((window as unknown as { __applyCost: unknown[] }).__applyCost.length = 0));
  for (let i = 0; i < UPDATES; i += 1) {
    const id = `row-${String((i * 37) % (ROWS - 5)).padStart(4, "0")}`;
    await page.evaluate(
      async ([id, value]) => {
        await fetch("/update", {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams({ id, field: "name", value }),
        });
      },
      [id, `updated ${i}`],
    );
    await expect(row(page, id).locator('td.c[data-field="name"]')).toHaveText(`updated ${i}`, { timeout: 120_000 });
  }
  await page.waitForTimeout(500);
  const raw = await page.evaluate(
    () => (window as unknown as { __applyCost: { kind: string; start: number; end: number }[] }).__applyCost,
  );
  const costs = raw.map((e, i) => ({
    kind: e.kind,
    ms: Math.min(e.end, i + 1 < raw.length ? raw[i + 1].start : Number.POSITIVE_INFINITY) - e.start,
  }));
  const pct = (xs: number[], p: number) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
  };
  const of = (kind: string) => costs.filter((c) => c.kind === kind).map((c) => c.ms);
  const summary = (xs: number[]) => ({ n: xs.length, p50: pct(xs, 50), p95: pct(xs, 95) });
  const report = {
    rows: ROWS,
    updates: UPDATES,
    primary_event_ms: summary(of("primary")),
    cache_event_ms: summary(of("cache")),
    stats_event_ms: summary(of("stats")),
    all_events_ms: summary(costs.map((c) => c.ms)),
  };
  console.log(`feed event apply cost with ${ROWS} rows: ${JSON.stringify(report)}`);
  writeFileSync(`${test.info().project.outputDir}/apply-cost.json`, JSON.stringify(report, null, 2));
  expect(of("cache").length).toBeGreaterThanOrEqual(UPDATES);
});
