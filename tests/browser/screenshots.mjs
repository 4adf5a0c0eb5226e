// Screenshots of each view of a report folder, for the docs (not a test):
//
//   node tests/browser/screenshots.mjs SITE_DIR OUT_DIR     (e.g. out/demo/site docs/screenshots: the full demo's report)

import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const site = resolve(process.argv[2]);
const out = resolve(process.argv[3] ?? 'docs/screenshots');
const server = await serve(site);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
mkdirSync(out, { recursive: true });
const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
const views = [
  ['runs', '?view=runs&sort=-score'],
  ['similarity', '?view=similarity&what=vectors&pair=rt_polarity,uci_imdb'],
  ['compose', '?view=compose&origin=origin0&tau=prompt_tuning/rt_polarity/origin0,prompt_tuning/uci_imdb/origin0&lambda=1'],
  ['curves', '?view=curves'],
  ['files', '?view=files'],
];
for (const [name, query] of views) {
  await page.goto(base + query);
  await page.waitForFunction(() => document.querySelector('[data-testid=study-status]')?.textContent.startsWith('Study'), null, { timeout: 60000 });
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: false });
  console.log(`wrote ${join(out, `${name}.png`)}`);
}
await browser.close();
server.close();
