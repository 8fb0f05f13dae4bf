import { test, expect, openDashboard, primaryCell } from "./fixtures";

test("the live indicator shows the server going away and reconnects by itself", async ({ page, server, guard }) => {
  // While the server is down the browser's reconnect attempts fail by design.
  guard.allowConsole.push(/ERR_CONNECTION_REFUSED|Failed to load resource|EventSource/);
  guard.allowStatus.push(503);
  await openDashboard(page);

  expect(await server.stop()).toBe(0);
  await expect(page.locator("#conn")).toHaveAttribute("data-state", "disconnected");
  await expect(page.locator("#conn")).toContainText("disconnected");

  await server.launch();
  await expect(page.locator("#conn")).toHaveAttribute("data-state", "live", { timeout: 15_000 });
  // The new server process has a fresh primary; its snapshot replaced the old state.
  await page.request.post("/update", { form: { id: "cat-004", field: "name", value: "Back again" } });
  await expect(primaryCell(page, "cat-004", "name")).toHaveText("Back again");
});
