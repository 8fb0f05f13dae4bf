import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { resolve } from "node:path";
import { test, expect, openDashboard, row, primaryCell, cacheCell } from "./fixtures";

// The shipped example's tables file (three tables) on a private
// PostgreSQL: one link per table, the first shown by default, each table a
// live, paged view of its own fields; a psql change reaches the view shown.
const shop = (file: string) => resolve(__dirname, "..", "..", "examples", "shop", file);
test.use({
  serverArgs: ["--primary", "postgres", "--pg-init", shop("schema.sql"), "--config", shop("tables.toml")],
});

function psql(url: string, sql: string) {
  const bin = ["/usr/bin/psql", ...readdirSync("/usr/lib/postgresql").map((v) => `/usr/lib/postgresql/${v}/bin/psql`)].find(existsSync);
  if (!bin) throw new Error("psql not found");
  execFileSync(bin, [url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { encoding: "utf8" });
}

const shownIds = (page: import("@playwright/test").Page) =>
  page.locator("#state-table tbody tr").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-id") ?? ""));

test("each table of a tables file has a live, paged view of its own", async ({ page, server }) => {
  await openDashboard(page);
  await expect(page.locator("#tables a")).toHaveCount(3);
  await expect(page.locator("#tables a.current")).toHaveText("public.products");
  await expect(row(page, "product:SKU-00001")).toHaveAttribute("data-status", "ok");
  await expect(page.locator("#state-table thead")).toContainText("title");

  await page.click("#tables a[data-table='public.customers']");
  await expect(page.locator("main[data-hydrated='true']")).toBeVisible({ timeout: 20_000 });
  await expect(page.locator("#conn")).toHaveAttribute("data-state", "live");
  await expect(page.locator("#tables a.current")).toHaveText("public.customers");
  await expect(page.locator("#state-table thead")).toContainText("email");
  const first = await shownIds(page);
  expect(first.length).toBeGreaterThan(0);
  expect(first.length).toBeLessThanOrEqual(100);
  for (const id of first) expect(id).toMatch(/^customer:\d+$/);

  // psql, outside the app: the change reaches both columns of this view.
  const id = first[0];
  psql(server.postgresUrl, `UPDATE customers SET name = 'From psql' WHERE id = ${id.slice("customer:".length)}`);
  await expect(primaryCell(page, id, "name")).toHaveText("From psql", { timeout: 5_000 });
  await expect(cacheCell(page, id, "name")).toHaveText("From psql", { timeout: 5_000 });
  await expect(row(page, id)).toHaveAttribute("data-status", "ok");
  // Each table's reads and changes, live: the customer change counts as theirs.
  const customers = page.locator('#table-stats tr[data-table="public.customers"] td');
  await expect(page.locator("#table-stats tbody tr")).toHaveCount(3);
  await expect(customers.nth(2)).not.toHaveText("0");

  // The next page of the same table holds other customers.
  await page.click("#pager a[data-page='next']");
  await expect(page.locator("main[data-hydrated='true']")).toBeVisible({ timeout: 20_000 });
  await expect(page.locator("#tables a.current")).toHaveText("public.customers");
  const second = await shownIds(page);
  expect(second.length).toBeGreaterThan(0);
  for (const id of second) expect(id).toMatch(/^customer:\d+$/);
  expect(second.filter((id) => first.includes(id))).toEqual([]);
});
