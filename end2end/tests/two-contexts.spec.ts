import { test, expect, openDashboard, watch, primaryCell, cacheCell, row } from "./fixtures";

test("two browser contexts see each other's changes", async ({ browser, baseURL, guard }) => {
  const contexts = await Promise.all([browser.newContext({ baseURL }), browser.newContext({ baseURL })]);
  const [a, b] = await Promise.all(contexts.map((c) => c.newPage()));
  const problems = [...[a, b].map((p) => watch(p, guard))];
  await openDashboard(a);
  await openDashboard(b);

  await a.selectOption("#update-id", "cat-001");
  await a.fill("#update-value", "From A");
  await a.click("#update-panel button[type=submit]");
  await expect(primaryCell(b, "cat-001", "name")).toHaveText("From A");
  await expect(cacheCell(b, "cat-001", "name")).toHaveText("From A");

  await b.selectOption("#delete-id", "cat-005");
  await b.click("#delete-panel button[type=submit]");
  await expect(row(a, "cat-005")).toHaveCount(0);

  await b.selectOption("#invalidate-id", "cat-002");
  await b.click("#invalidate-form button[type=submit]");
  await expect(row(a, "cat-002")).toHaveAttribute("data-status", "missing");

  expect(problems.flat()).toEqual([]);
  await Promise.all(contexts.map((c) => c.close()));
});
