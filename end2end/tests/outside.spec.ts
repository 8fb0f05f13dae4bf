import { test, expect, openDashboard, row, primaryCell, cacheCell, logEntry } from "./fixtures";

test("a change made through the API by another client appears live", async ({ page, request }) => {
  await openDashboard(page);
  const res = await request.post("/update", { form: { id: "cat-001", field: "featured", value: "false" } });
  expect(res.status()).toBe(200);
  await expect(primaryCell(page, "cat-001", "featured")).toHaveText("false");
  await expect(cacheCell(page, "cat-001", "featured")).toHaveText("false");
});

test("redis-cli DEL on a cache key: the row goes missing, then comes back from the primary by itself", async ({ page, redis }) => {
  await openDashboard(page);
  expect(redis.cli("DEL", "cache:category:cat-003")).toBe("1");
  await expect(logEntry(page, "external", "delete", "cat-003")).toHaveCount(1);
  await expect(logEntry(page, "restored", "write", "cat-003")).toHaveCount(1);
  await expect(row(page, "cat-003")).toHaveAttribute("data-status", "ok");
  await expect(cacheCell(page, "cat-003", "name")).not.toHaveText("—");
});

test("redis-cli HSET on a cache key shows the row as stale", async ({ page, redis }) => {
  await openDashboard(page);
  redis.cli("HSET", "cache:category:cat-002", "name", "Tampered");
  await expect(cacheCell(page, "cat-002", "name")).toHaveText("Tampered");
  await expect(row(page, "cat-002")).toHaveAttribute("data-status", "stale");
  await expect(cacheCell(page, "cat-002", "name")).toHaveClass(/diff/);
});
