import type { Browser } from "@playwright/test";
import { test, expect, openDashboard, row, primaryCell, cacheCell } from "./fixtures";

const SEED = ["Beverages", "Bakery", "Pantry Staples", "Frozen", "Specialty Cheeses"];

test("the server renders the seed state into the HTML before any WASM runs", async ({ request }) => {
  const res = await request.get("/");
  expect(res.status()).toBe(200);
  const html = await res.text();
  for (let i = 1; i <= 5; i++) {
    expect(html).toContain(`data-id="cat-00${i}" data-status="ok"`);
  }
  for (const name of SEED) expect(html).toContain(name);
  expect(html).toContain('data-stat="prefetched">5<');
});

async function postFormsWithoutJavaScript(browser: Browser, baseURL: string | undefined) {
  const context = await browser.newContext({ javaScriptEnabled: false, baseURL });
  const page = await context.newPage();
  await page.goto("/");
  await expect(row(page, "cat-003")).toHaveAttribute("data-status", "ok");
  await expect(primaryCell(page, "cat-003", "name")).toHaveText("Pantry Staples");
  await expect(page.locator("#conn")).toHaveAttribute("data-state", "connecting");

  // A plain form post runs the server function and redirects back.
  await page.selectOption("#update-id", "cat-003");
  await page.fill("#update-value", "Dry Goods");
  await page.click("#update-panel button[type=submit]");
  await page.waitForURL(/\/(\?.*)?$/);
  await expect(primaryCell(page, "cat-003", "name")).toHaveText("Dry Goods");

  // A refused one comes back with its error in the status bar.
  await page.fill("#add-id", "cat-001");
  await page.click("#add-panel button[type=submit]");
  await page.waitForURL(/__err=/);
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "error");
  await expect(page.locator("#status")).toHaveText("Category 'cat-001' already exists.");
  const refused = page.url();
  await context.close();
  return refused;
}

test("without JavaScript the page shows the state and its forms still work", async ({ browser, baseURL }) => {
  await postFormsWithoutJavaScript(browser, baseURL);
});

test("a form error from a no-JavaScript post survives hydration", async ({ browser, baseURL, page }) => {
  const refused = await postFormsWithoutJavaScript(browser, baseURL);
  await page.goto(refused);
  await expect(page.locator("main[data-hydrated='true']")).toBeVisible({ timeout: 20_000 });
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "error");
  await expect(page.locator("#status")).toHaveText("Category 'cat-001' already exists.");
  // The next action replaces it as usual.
  await page.click("#reset-button");
  await expect(page.locator("#status")).toHaveAttribute("data-kind", "ok");
});

test("the page hydrates and connects to the live feed", async ({ page }) => {
  await openDashboard(page);
  for (let i = 1; i <= 5; i++) {
    await expect(row(page, `cat-00${i}`)).toHaveAttribute("data-status", "ok");
    await expect(cacheCell(page, `cat-00${i}`, "name")).toHaveText(SEED[i - 1]);
  }
  await expect(page.locator("#worker")).toHaveAttribute("data-state", "running");
  await expect(page.locator("#external")).toContainText("keyspace notifications");
  await page.screenshot({ path: `${test.info().project.outputDir}/dashboard.png`, fullPage: true });
});
