import { test, expect, openDashboard, row, stat } from "./fixtures";

const IDS = ["cat-001", "cat-002", "cat-003", "cat-004", "cat-005"];

test("invalidate one, clear all, then re-prefetch brings everything back with one primary read", async ({ page }) => {
  await openDashboard(page);
  await expect(stat(page, "primary_reads_total")).toHaveText("1");

  await page.selectOption("#invalidate-id", "cat-002");
  await page.click("#invalidate-form button[type=submit]");
  await expect(row(page, "cat-002")).toHaveAttribute("data-status", "missing");
  await expect(row(page, "cat-001")).toHaveAttribute("data-status", "ok");

  await page.click("#clear-form button[type=submit]");
  for (const id of IDS) await expect(row(page, id)).toHaveAttribute("data-status", "missing");
  await expect(page.locator("#status")).toContainText("Cleared 4 cache entries");
  await expect(page.locator("#state-summary .tag.missing")).toContainText("5");

  await page.click("#reprefetch-form button[type=submit]");
  for (const id of IDS) await expect(row(page, id)).toHaveAttribute("data-status", "ok");
  await expect(stat(page, "primary_reads_total")).toHaveText("2");
  await expect(page.locator("#status")).toContainText("Re-prefetched 5 records");
  await expect(row(page, "cat-001").locator("td.ttl")).toHaveText(/^3(5|6)\d\d s$/);
});
