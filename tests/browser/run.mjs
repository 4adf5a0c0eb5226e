// Headless-Chromium test of the web app built by trunk.
//
//   node tests/browser/run.mjs [SITE_DIR]      (default target/site; TPV_BIN defaults to target/debug/tpv)
//
// Serves SITE_DIR on 127.0.0.1, opens it in Debian's chromium through playwright-core, opens files
// through the file picker and the drop zone, and checks what the page shows against `tpv inspect
// --json` on the same files. A corrupt file must show an error and leave the page working.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const site = resolve(process.argv[2] ?? join(root, 'target', 'site'));
const tpvBin = process.env.TPV_BIN ?? join(root, 'target', 'debug', 'tpv');
const fixtures = join(root, 'tests', 'fixtures');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

let failures = 0;
function check(condition, message) {
  if (condition) {
    console.log(`  ok   ${message}`);
  } else {
    failures += 1;
    console.log(`  FAIL ${message}`);
  }
}


function inspect(...files) {
  return JSON.parse(execFileSync(tpvBin, ['inspect', '--json', ...files], { encoding: 'utf8' }));
}

async function card(page, name) {
  const c = page.locator(`[data-testid="file-card"][data-name="${name}"]`).last();
  await c.waitFor({ timeout: 20000 });
  return c;
}

const sample = join(fixtures, 'runs', 'v1', 'sst2-origin1.safetensors');
const t5 = join(fixtures, 'peft', 't5_seq2seq');
const scratch = mkdtempSync(join(tmpdir(), 'tpv-browser-'));
const corrupt = join(scratch, 'corrupt.safetensors');
writeFileSync(corrupt, readFileSync(sample).subarray(0, 300));

const server = await serve(site);
const url = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const errors = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => errors.push(String(e)));
  // The app probes for a study's manifest.json beside it; outside a report folder that is a 404.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('404')) errors.push(m.text()); });
  await page.goto(url);
  const input = page.getByTestId('file-input');
  await input.waitFor({ timeout: 30000 });
  console.log(`web app at ${url}`);

  // 1. A run file and a corrupt file, through the file picker.
  const [want] = inspect(sample);
  await input.setInputFiles([sample, corrupt]);
  const good = await card(page, 'sst2-origin1.safetensors');
  check((await good.getByTestId('kind').textContent()) === 'task-prompt', 'run file: kind');
  check((await good.getByTestId('label').textContent()) === 'sst2@origin1', 'run file: label');
  check((await good.getByTestId('shape').textContent()) === '4 × 8', 'run file: shape');
  check((await good.getByTestId('format').textContent()) === 'tpv-run v1', 'run file: format');
  const norm = await good.getByTestId('norms-values').locator('td').first().textContent();
  check(norm === want.norms.frobenius.toFixed(6), `run file: norm ${norm} = tpv inspect ${want.norms.frobenius.toFixed(6)}`);
  const vnorm = await good.getByTestId('norms-vector').locator('td').first().textContent();
  check(vnorm === want.vector_norms.frobenius.toFixed(6), 'run file: vector norm = tpv inspect');
  check((await good.getByTestId('metadata').textContent()).includes('sample-split-sst2'), 'run file: metadata listed');
  const bad = await card(page, 'corrupt.safetensors');
  const message = await bad.getByTestId('file-error').textContent();
  check(message.length > 10 && (await bad.getByTestId('file-error').getAttribute('role')) === 'alert',
    `corrupt file: visible error "${message}"`);

  // 2. The page still works after the error: a peft adapter (weights + config chosen together).
  const [wantPeft] = inspect(t5);
  await input.setInputFiles([join(t5, 'adapter_model.safetensors'), join(t5, 'adapter_config.json')]);
  const peft = await card(page, 'adapter_model.safetensors');
  check((await peft.getByTestId('format').textContent()) === wantPeft.format, 'peft adapter: format names SEQ_2_SEQ_LM');
  check((await peft.getByTestId('shape').textContent()) === '4 × 16', 'peft adapter: used rows');
  check((await peft.getByTestId('stored-shape').textContent()) === '8 × 16 F32', 'peft adapter: stored shape');

  // 3. Drag and drop.
  const bytes = [...readFileSync(join(fixtures, 'runs', 'v1', 'origin2.safetensors'))];
  const dt = await page.evaluateHandle((data) => {
    const t = new DataTransfer();
    t.items.add(new File([new Uint8Array(data)], 'origin2.safetensors'));
    return t;
  }, bytes);
  await page.getByTestId('drop-zone').dispatchEvent('drop', { dataTransfer: dt });
  const dropped = await card(page, 'origin2.safetensors');
  check((await dropped.getByTestId('kind').textContent()) === 'origin', 'drop: origin opened');
  check((await page.getByTestId('file-card').count()) === 4, 'four cards listed');

  // 4. Keyboard: the view tabs, then the file input, are reachable with Tab.
  let focused = '';
  const seen = [];
  for (let k = 0; k < 12 && focused !== 'file-input'; k += 1) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.id);
    seen.push(focused);
  }
  check(focused === 'file-input' && seen.includes('tab-files'), `keyboard: Tab reaches the view tabs and the file input (${seen.join(' → ')})`);
  if (process.env.TPV_SCREENSHOT) await page.screenshot({ path: process.env.TPV_SCREENSHOT, fullPage: true });
  check(errors.length === 0, `no page errors ${errors.length ? JSON.stringify(errors) : ''}`);
} finally {
  await browser.close();
  server.close();
}

if (failures > 0) {
  console.log(`${failures} browser check(s) failed`);
  process.exit(1);
}
console.log('browser tests passed');
