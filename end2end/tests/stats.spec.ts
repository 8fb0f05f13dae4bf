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
