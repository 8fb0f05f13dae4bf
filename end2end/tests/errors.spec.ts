import { test, expect, openDashboard } from "./fixtures";

test("adding an existing id shows the conflict in the status bar", async ({ page, guard }) => {
  guard.allowStatus.push(409);
  await openDashboard(page);
  await page.fill("#add-id", "cat-001");
  await page.click("#add-panel button[type=submit]");
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "error");
  await expect(page.locator("#status")).toHaveText("Category 'cat-001' already exists.");
});

test("updating an unknown id shows the error in the status bar", async ({ page, guard }) => {
  guard.allowStatus.push(404);
  await openDashboard(page);
  // Offer an id the primary does not have, as a stale tab would.
  await page.$eval("#update-id", (el) => {
    const select = el as HTMLSelectElement;
    select.add(new Option("cat-999", "cat-999"));
    select.value = "cat-999";
  });
  await page.fill("#update-value", "x");
  await page.click("#update-panel button[type=submit]");
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "error");
  await expect(page.locator("#status")).toHaveText("Unknown category 'cat-999'.");
});

test("an invalid value is refused with a clear message", async ({ page, guard }) => {
  guard.allowStatus.push(400);
  await openDashboard(page);
  await page.selectOption("#update-field", "display_order");
  await page.fill("#update-value", "first");
  await page.click("#update-panel button[type=submit]");
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "error");
  await expect(page.locator("#status")).toContainText("'display_order' must be an integer");
});
