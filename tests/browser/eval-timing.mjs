// In-browser evaluation speed and agreement with the CLI (not a test: it prints, it asserts
// nothing). Opens a report folder's Evaluate view in headless Chromium with a model served next to
// it, evaluates a run on a task's bundled examples, and prints the load time, examples/s and, given
// the output of `tpv eval --json` on the same inputs, how many predictions agree and the largest
// loss difference.
//
//   node tests/browser/eval-timing.mjs SITE_DIR MODEL_FILE RUN_ID TASK [N] [BATCH] [NATIVE_JSON]
//   e.g. SITE=out/demo/site; tpv eval --json --model smollm2 --prompt out/demo/study/RUN/prompt.safetensors \
//          --data $SITE/examples/rt_polarity.json > native.json
//        node tests/browser/eval-timing.mjs $SITE ~/.cache/tpv/…/model.gguf prompt_tuning/rt_polarity/origin0 rt_polarity 48 8 native.json
// TPV_WORKERS=N sizes the pool of workers (default: one per core, at most 4).
// TPV_SCREENSHOT=FILE.png saves the view after the evaluation (docs/screenshots/evaluate.png).

import { basename, join, resolve } from 'node:path';
import { mkdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const [siteArg, modelArg, run, task, n = '48', batch = '8', nativeJson] = process.argv.slice(2);
const site = resolve(siteArg);
const model = resolve(modelArg);
const linkDir = join(site, 'eval-timing-model');
rmSync(linkDir, { recursive: true, force: true });
mkdirSync(linkDir);
symlinkSync(model, join(linkDir, basename(model)));
const server = await serve(site);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [...(process.env.TPV_JS_FLAGS ? [`--js-flags=${process.env.TPV_JS_FLAGS}`] : []), '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('pageerror', (e) => console.log('page error:', String(e)));
  const url = `${base}?view=evaluate&model=${encodeURIComponent(`eval-timing-model/${basename(model)}`)}`
    + `&prompt=${encodeURIComponent(run)}&examples=${encodeURIComponent(task)}&n=${n}&batch=${batch}`
    + (process.env.TPV_WORKERS ? `&workers=${process.env.TPV_WORKERS}` : '');
  const t0 = Date.now();
  await page.goto(url);
  await page.locator('[data-testid=model-status][data-loaded=true]').waitFor({ timeout: 600000 });
  console.log(`model: ${await page.getByTestId('model-status').textContent()} (${Date.now() - t0} ms from page load)`);
  await page.locator(`[data-testid=eval-examples] option[value="${task}"]`).waitFor({ state: 'attached', timeout: 60000 });
  await page.waitForTimeout(500);
  await page.getByTestId('eval-run').click();
  await page.locator('[data-testid=eval-results][data-running=false]').waitFor({ timeout: 3600000 });
  console.log(`evaluation: ${await page.getByTestId('eval-status').textContent()}`);
  const got = await page.getByTestId('eval-example').evaluateAll((els) => els.map((e) => ({
    prediction: e.dataset.prediction, loss: Number(e.dataset.loss),
  })));
  if (process.env.TPV_SCREENSHOT) await page.screenshot({ path: process.env.TPV_SCREENSHOT, fullPage: false });
  if (nativeJson) {
    const cli = JSON.parse(readFileSync(nativeJson, 'utf8'));
    const same = got.filter((g, i) => g.prediction === cli.examples[i]?.prediction).length;
    const diff = Math.max(...got.map((g, i) => Math.abs(g.loss - cli.examples[i].loss)));
    console.log(`agreement with tpv eval: ${same} of ${got.length} predictions equal, max loss difference ${diff.toExponential(2)}`);
    console.log(`native tpv eval: ${cli.timing.examples_per_s.toFixed(3)} examples/s (${cli.timing.eval_s.toFixed(1)} s, load ${cli.timing.load_s.toFixed(2)} s)`);
  }
} finally {
  await browser.close();
  server.close();
  rmSync(linkDir, { recursive: true, force: true });
}
