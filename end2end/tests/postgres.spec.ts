import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { test, expect, openDashboard, row, primaryCell, cacheCell } from "./fixtures";

// The dashboard on a PostgreSQL primary (`--primary postgres`: a private
// PostgreSQL for this server): a change made with psql, outside the app,
// reaches both columns in the browser within a second.
test.use({ serverArgs: ["--primary", "postgres"] });

function psql(url: string, sql: string) {
  const bin = ["/usr/bin/psql", ...readdirSync("/usr/lib/postgresql").map((v) => `/usr/lib/postgresql/${v}/bin/psql`)].find(existsSync);
  if (!bin) throw new Error("psql not found");
  execFileSync(bin, [url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { encoding: "utf8" });
}

test("a psql UPDATE shows in both columns within a second, and the header names the source", async ({ page, server }) => {
  await openDashboard(page);
  await expect(page.locator("#source")).toHaveAttribute("data-kind", "postgres");
  await expect(page.locator("#source")).toContainText("PostgreSQL 15");
  await expect(page.locator("#source")).toContainText("slot");
  await expect(row(page, "cat-001")).toHaveAttribute("data-status", "ok");

  const started = Date.now();
  psql(server.postgresUrl, "UPDATE categories SET name = 'From psql' WHERE id = 'cat-001'");
  await expect(primaryCell(page, "cat-001", "name")).toHaveText("From psql", { timeout: 1_000 });
  await expect(cacheCell(page, "cat-001", "name")).toHaveText("From psql", { timeout: 1_000 });
  expect(Date.now() - started).toBeLessThan(1_500);

  // Several statements in one transaction, and a TRUNCATE.
  psql(
    server.postgresUrl,
    "BEGIN; INSERT INTO categories (id, name) VALUES ('cat-042', 'Spices'); DELETE FROM categories WHERE id = 'cat-004'; COMMIT",
  );
  await expect(row(page, "cat-042")).toHaveAttribute("data-status", "ok");
  await expect(row(page, "cat-004")).toHaveCount(0);
  psql(server.postgresUrl, "TRUNCATE categories");
  await expect(page.locator("#state-table tbody tr")).toHaveCount(0);
});
