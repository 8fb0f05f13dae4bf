import { test, expect, openDashboard, row, logEntry, cacheCell } from "./fixtures";

// The operations panels: drift, breaking the pipeline, the live chart.
// Lost keys are left lost here, for the drift panel to find.
test.use({ serverArgs: ["--restore-lost", "off"] });

test("the drift panel names what broke and repairs it with one click", async ({ page, redis, server }) => {
  await openDashboard(page);
  await expect(page.locator("#drift-panel")).toContainText("Not reconciled yet.");
  redis.cli("DEL", `cache:category:cat-002`);
  redis.cli("HSET", `cache:category:cat-003`, "name", "vandal");
  await page.locator("#reconcile-button").click();
  await expect(page.locator('#drift dd[data-drift="missing"]')).toHaveAttribute("data-count", "1");
  await expect(page.locator('#drift dd[data-drift="missing"]')).toContainText("cat-002");
  await expect(page.locator('#drift dd[data-drift="changed_outside"]')).toContainText("cat-003");
  await page.locator("#repair-button").click();
  await expect(page.locator("#status")).toContainText("Repaired 2 keys");
  await expect(row(page, "cat-002")).toHaveAttribute("data-status", "ok");
  await expect(row(page, "cat-003")).toHaveAttribute("data-status", "ok");
  await page.locator("#reconcile-button").click();
  await expect(page.locator("#status")).toContainText("No drift");
  await expect(page.locator('#drift dd[data-drift="missing"]')).toHaveAttribute("data-count", "0");
  expect(server.output).not.toContain("panicked");
});

test("each fault button does what it says and the version guard contains it", async ({ page }) => {
  await openDashboard(page);
  const update = async (id: string, value: string) => {
    await page.locator("#update-id").selectOption(id);
    await page.locator("#update-field").selectOption("name");
    await page.locator("#update-value").fill(value);
    await page.locator("#update-panel button[type=submit]").click();
    await expect(page.locator("#status")).toContainText("Primary updated");
  };

  await page.locator('button[data-fault="duplicate"]').click();
  await expect(page.locator("#status")).toContainText("Fault queued: duplicate");
  await update("cat-001", "dup");
  await expect(logEntry(page, "fault", "duplicated", "cat-001")).toContainText("refused by the version guard");
  await expect(row(page, "cat-001")).toHaveAttribute("data-status", "ok");

  await page.locator('button[data-fault="drop"]').click();
  await update("cat-002", "lost");
  await expect(logEntry(page, "fault", "dropped", "cat-002")).toContainText("never applied");
  await expect(row(page, "cat-002")).toHaveAttribute("data-status", "stale");
  // The dropped change is what reconciliation finds.
  await page.locator("#reconcile-button").click();
  await expect(page.locator('#drift dd[data-drift="stale"]')).toContainText("cat-002");

  await page.locator('button[data-fault="reorder"]').click();
  await update("cat-003", "r1");
  await expect(logEntry(page, "fault", "reordered", "cat-003")).toBeVisible();
  await expect(cacheCell(page, "cat-003", "name")).toHaveText("r1");

  await page.locator('button[data-fault="delay"]').click();
  await update("cat-004", "slow");
  await expect(cacheCell(page, "cat-004", "name")).toHaveText("slow", { timeout: 5_000 });

  await page.locator('button[data-fault="outage"]').click();
  await update("cat-005", "after outage");
  await expect(page.locator("#worker")).toHaveAttribute("data-state", "retrying");
  await expect(cacheCell(page, "cat-005", "name")).toHaveText("after outage", { timeout: 8_000 });
  await expect(page.locator("#worker")).toHaveAttribute("data-state", "running");

  await page.locator('button[data-worker="pause"]').click();
  await expect(page.locator("#worker")).toHaveAttribute("data-state", "paused");
  await page.locator('button[data-worker="resume"]').click();
  await expect(page.locator("#worker")).toHaveAttribute("data-state", "running");
  await update("cat-001", "after pause");
  await expect(cacheCell(page, "cat-001", "name")).toHaveText("after pause");
});

test("the live chart draws lag and throughput from the feed", async ({ page }) => {
  await openDashboard(page);
  for (let i = 0; i < 5; i += 1) {
    await page.evaluate(async (i) => {
      await fetch("/update", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ id: "cat-001", field: "name", value: `chart ${i}` }),
      });
    }, i);
  }
  await page.waitForTimeout(3_000);
  const points = await page.locator("#rate-chart polyline").getAttribute("points");
  expect((points ?? "").trim().split(/\s+/).length).toBeGreaterThanOrEqual(2);
  const lag = await page.locator("#lag-chart polyline.p99").getAttribute("points");
  expect((lag ?? "").trim().length).toBeGreaterThan(0);
});
