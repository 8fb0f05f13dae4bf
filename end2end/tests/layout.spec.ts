import { test, expect, openDashboard } from "./fixtures";

// The dashboard's layout holds on a phone, a laptop and a wide screen: no
// horizontal scrolling of the page, every panel inside the viewport, and no
// value broken inside a word (the stats card once wrapped "1.4 MB" one
// character per line). Screenshots are kept as test artifacts.
for (const width of [390, 1400, 1920]) {
  test(`the dashboard holds at ${width} px`, async ({ page }) => {
    await page.setViewportSize({ width, height: 900 });
    await openDashboard(page);
    const layout = await page.evaluate(() => {
      const viewport = document.documentElement.clientWidth;
      const outside = [...document.querySelectorAll<HTMLElement>(".panel")]
        .filter((p) => {
          const r = p.getBoundingClientRect();
          return r.width === 0 || r.left < -1 || r.right > viewport + 1;
        })
        .map((p) => p.id || p.querySelector("h2")?.textContent || "a panel");
      // A text that takes more lines than it has words broke inside one.
      const broken = [...document.querySelectorAll<HTMLElement>("#stats dt, #stats dd, #totals, .badge, .panel h2, button")]
        .filter((el) => {
          const text = (el.textContent ?? "").trim();
          if (!text || el.getClientRects().length === 0) return false;
          const range = document.createRange();
          range.selectNodeContents(el);
          const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
          return lines > text.split(/\s+/).length;
        })
        .map((el) => (el.textContent ?? "").trim());
      return { scroll: document.documentElement.scrollWidth, viewport, outside, broken };
    });
    await page.screenshot({ path: `${test.info().project.outputDir}/layout-${width}.png`, fullPage: true });
    expect(layout.scroll, "the page scrolls sideways").toBeLessThanOrEqual(layout.viewport);
    expect(layout.outside, "panels outside the viewport").toEqual([]);
    expect(layout.broken, "values broken inside a word").toEqual([]);
  });
}
