import { test, expect, openDashboard, row, primaryCell, cacheCell, logEntry } from "./fixtures";

test("an update shows in the primary and then the cache, with its events logged", async ({ page }) => {
  await openDashboard(page);
  await page.selectOption("#update-id", "cat-002");
  await page.selectOption("#update-field", "name");
  await page.fill("#update-value", "Bread & Pastry");
  await page.click("#update-panel button[type=submit]");
  await expect(primaryCell(page, "cat-002", "name")).toHaveText("Bread & Pastry");
  await expect(cacheCell(page, "cat-002", "name")).toHaveText("Bread & Pastry");
  await expect(row(page, "cat-002")).toHaveAttribute("data-status", "ok");
  await expect(logEntry(page, "primary", "upsert", "cat-002")).toHaveCount(1);
  await expect(logEntry(page, "sync", "write", "cat-002")).toHaveCount(1);
  await expect(page.locator("#status")).toContainText("Primary updated: cat-002.name");
});

test("an added category appears on both sides", async ({ page }) => {
  await openDashboard(page);
  await expect(page.locator("#add-id")).toHaveValue("cat-006");
  await expect(page.locator("#add-name")).toHaveValue("Seasonal");
  await expect(page.locator("#add-display-order")).toHaveValue("6");
  await page.click("#add-panel button[type=submit]");
  await expect(primaryCell(page, "cat-006", "name")).toHaveText("Seasonal");
  await expect(cacheCell(page, "cat-006", "display_order")).toHaveText("6");
  await expect(row(page, "cat-006")).toHaveAttribute("data-status", "ok");
  await expect(page.locator('#update-id option[value="cat-006"]')).toHaveCount(1);
  await expect(logEntry(page, "primary", "upsert", "cat-006")).toHaveCount(1);
  await expect(logEntry(page, "sync", "write", "cat-006")).toHaveCount(1);
});

test("a deleted category leaves the primary and then the cache", async ({ page }) => {
  await openDashboard(page);
  await page.selectOption("#delete-id", "cat-004");
  await page.click("#delete-panel button[type=submit]");
  await expect(row(page, "cat-004")).toHaveCount(0);
  await expect(page.locator('#delete-id option[value="cat-004"]')).toHaveCount(0);
  await expect(logEntry(page, "primary", "delete", "cat-004")).toHaveCount(1);
  await expect(logEntry(page, "sync", "delete", "cat-004")).toHaveCount(1);
});
