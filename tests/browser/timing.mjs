// How long a report folder takes in headless Chromium (not a test: it prints, it asserts nothing):
// page load until the study is loaded, the first heatmap after the click, and switching the
// heatmap between prompts and vectors and between measures. Median of --repeats fresh pages.
//
//   node tests/browser/timing.mjs SITE_DIR [REPEATS]     (e.g. out/demo/site 3)

import { resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const site = resolve(process.argv[2]);
const repeats = Number(process.argv[3] ?? 3);
const server = await serve(site);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const times = { load: [], firstHeatmap: [], prompts: [], flat: [] };
let status = '';
// Time from an action until the heatmap's cells change (the first cell's value or the count).
const heatmapChange = async (page, action) => {
  const before = await page.evaluate(() => {
    const cells = document.querySelectorAll('[data-testid=heatmap-cell]');
    return `${cells.length}:${cells[0]?.dataset.value}:${cells[cells.length - 1]?.dataset.value}`;
  });
  const t = Date.now();
  await action();
  await page.waitForFunction((b) => {
    const cells = document.querySelectorAll('[data-testid=heatmap-cell]');
    return cells.length > 0 && `${cells.length}:${cells[0]?.dataset.value}:${cells[cells.length - 1]?.dataset.value}` !== b;
  }, before, { timeout: 60000, polling: 5 });
  return Date.now() - t;
};
for (let i = 0; i < repeats; i++) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const t0 = Date.now();
  await page.goto(base);
  await page.waitForFunction(() => document.querySelector('[data-testid=study-status]')?.textContent.startsWith('Study'), null, { timeout: 60000, polling: 5 });
  times.load.push(Date.now() - t0);
  status = await page.getByTestId('study-status').textContent();
  times.firstHeatmap.push(await heatmapChange(page, () => page.getByTestId('tab-similarity').click()));
  times.prompts.push(await heatmapChange(page, () => page.getByTestId('sim-prompts').check()));
  times.flat.push(await heatmapChange(page, () => page.getByTestId('sim-measure').selectOption('cosine-flat')));
  await page.close();
}
console.log(`${site}: ${status}`);
console.log(`median of ${repeats}: page load to study loaded ${median(times.load)} ms; first heatmap ${median(times.firstHeatmap)} ms after the click; ` +
  `vectors → prompts ${median(times.prompts)} ms; token-mean → flat cosine ${median(times.flat)} ms`);
await browser.close();
server.close();
