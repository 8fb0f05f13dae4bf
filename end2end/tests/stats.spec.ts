import { test, expect, openDashboard, stat } from "./fixtures";

test("stats follow reads made by other clients, live, and reset zeroes them", async ({ page, request }) => {
  await openDashboard(page);
  await expect(stat(page, "hits")).toHaveText("0");
  for (let i = 0; i < 3; i++) await request.get("/read?id=cat-001");
  await request.get("/read?id=cat-404");
  await expect(stat(page, "hits")).toHaveText("3");
  await expect(stat(page, "misses")).toHaveText("1");
  await expect(stat(page, "hit_rate_pct")).toHaveText("75.0%");

  await request.post("/update", { form: { id: "cat-003", field: "name", value: "Staples" } });
  await expect(stat(page, "sync_events_applied")).toHaveText("1");
  await expect(stat(page, "sync_lag_ms_avg")).toHaveText(/^\d+\.\d\d ms$/);

  await page.click("#reset-button");
  await expect(stat(page, "hits")).toHaveText("0");
  await expect(stat(page, "misses")).toHaveText("0");
  await expect(stat(page, "primary_reads_total")).toHaveText("0");
  await expect(page.locator("#status")).toHaveText("Counters reset.");
});

test("the consistency rows: visible within 10 ms / 100 ms / 1 s, stale reads, misses by why, keys restored", async ({ page, request, redis }) => {
  await openDashboard(page);
  await expect(stat(page, "visible_within")).toHaveText("100 / 100 / 100 %");
  await expect(stat(page, "stale_read_pct")).toHaveText("0.00% (0)");
  await request.get("/read?id=cat-404");
  await expect(stat(page, "misses_by_kind")).toHaveText("0 / 1 / 0");
  // A paused worker holds a change back: reads of its row are stale, and
  // it becomes visible more than a second after its commit.
  await request.post("/worker", { form: { action: "pause" } });
  await request.post("/update", { form: { id: "cat-003", field: "name", value: "Held" } });
  await request.get("/read?id=cat-003");
  await expect(stat(page, "stale_read_pct")).toHaveText("50.00% (1)");
  await page.waitForTimeout(1100);
  await request.post("/worker", { form: { action: "resume" } });
  await expect(stat(page, "visible_within")).not.toHaveText("100 / 100 / 100 %");
  // A key deleted behind the cache's back comes back from the primary.
  redis.cli("DEL", "cache:category:cat-002");
  await expect(stat(page, "lost_restored")).toHaveText("1");
});
