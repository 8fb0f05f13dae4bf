import { test, expect, openDashboard, stat } from "./fixtures";

test("reading a cached category shows a hit with latency, TTL and all five fields", async ({ page }) => {
  await openDashboard(page);
  await page.selectOption("#read-id", "cat-005");
  await page.click("#read-panel button[type=submit]");
  const result = page.locator("#read-result");
  await expect(result).toHaveAttribute("data-hit", "true");
  await expect(result.locator(".badge.hit")).toHaveText("cache hit");
  await expect(page.locator("#read-latency")).toHaveText(/^\d+\.\d{3} ms$/);
  const ttl = Number(await page.locator("#read-ttl").textContent());
  expect(ttl).toBeGreaterThan(3500);
  expect(ttl).toBeLessThanOrEqual(3600);
  const fields = result.locator("#read-fields");
  await expect(fields.locator('dd[data-field="id"]')).toHaveText("cat-005");
  await expect(fields.locator('dd[data-field="name"]')).toHaveText("Specialty Cheeses");
  await expect(fields.locator('dd[data-field="display_order"]')).toHaveText("5");
  await expect(fields.locator('dd[data-field="featured"]')).toHaveText("false");
  await expect(fields.locator('dd[data-field="parent_id"]')).toHaveText("cat-002");
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "ok");
  await expect(stat(page, "hits")).toHaveText("1");
});

test("after an invalidate a read misses and the primary is not asked", async ({ page }) => {
  await openDashboard(page);
  await expect(stat(page, "primary_reads_total")).toHaveText("1");
  await page.selectOption("#invalidate-id", "cat-001");
  await page.click("#invalidate-form button[type=submit]");
  await expect(page.locator('#state-table tr[data-id="cat-001"]')).toHaveAttribute("data-status", "missing");

  await page.selectOption("#read-id", "cat-001");
  await page.click("#read-panel button[type=submit]");
  await expect(page.locator("#read-result")).toHaveAttribute("data-hit", "false");
  await expect(page.locator("#read-result .badge.miss")).toHaveText("cache miss");
  await expect(page.locator("#read-ttl")).toHaveText("-2");
  await expect(stat(page, "misses")).toHaveText("1");
  await expect(stat(page, "primary_reads_total")).toHaveText("1");
});
