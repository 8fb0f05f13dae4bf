import { test, expect, openDashboard, row, primaryCell, cacheCell } from "./fixtures";

// The dashboard of a replica that follows an RDI change stream through the
// durable feed (`--primary stream:… --pipeline e2e`): entries written the
// way RDI's collector writes them show in both columns; a poison entry in
// the feed shows in the dead-letter panel with its reason, and Replay puts
// it back.
const STREAM = "data:shop.public.categories";
test.use({ serverArgs: ["--primary", `stream:${STREAM}`, "--pipeline", "e2e", "--pipeline-partitions", "1"] });

function rdiEntry(op: string, id: string, after: Record<string, unknown> | null): string[] {
  const value = JSON.stringify({ before: null, after, source: { connector: "postgresql", table: "categories" }, op, ts_ms: Date.now() });
  return ["key", JSON.stringify({ id }), "value", value];
}

test("stream entries reach both columns and dead letters can be replayed from the page", async ({ page, redis }) => {
  await openDashboard(page);
  await expect(page.locator("#source")).toHaveAttribute("data-kind", "redis-stream");
  await expect(page.locator("#dead-letter-count")).toContainText("0 in the feed's dead-letter stream");

  redis.cli("XADD", STREAM, "*", ...rdiEntry("c", "cat-900", { id: "cat-900", name: "From RDI", display_order: 9, featured: false, parent_id: "" }));
  await expect(primaryCell(page, "cat-900", "name")).toHaveText("From RDI");
  await expect(cacheCell(page, "cat-900", "name")).toHaveText("From RDI");
  await expect(row(page, "cat-900")).toHaveAttribute("data-status", "ok");

  redis.cli("XADD", "prefetch:{e2e}:cdc:p00", "*", "v", "0:1:0", "changes", "{broken");
  await expect(page.locator("#dead-letter-count")).toContainText("1 in the feed's dead-letter stream");
  await expect(page.locator("#dead-letter-last")).toContainText("not the feed's JSON");

  await page.locator("#replay-button").click();
  await expect(page.locator("#status")).toContainText("Replayed 1 dead letter into the feed.");
  // Still broken: it comes back, and nothing else changed.
  await expect(page.locator("#dead-letter-count")).toContainText("1 in the feed's dead-letter stream");
  await expect(cacheCell(page, "cat-900", "name")).toHaveText("From RDI");
});
