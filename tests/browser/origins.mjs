// Headless-Chromium test: the web app fetches from another site only after the user says so.
//
//   node tests/browser/origins.mjs [SITE_DIR]   (the trunk build, default target/site)
//
// Serves the app on one loopback origin (127.0.0.1:A, with a study in local/ and a model in
// model/) and a study and a model on a second one (127.0.0.1:B, which counts the requests it
// gets). A link naming the other origin (`?manifest=`, `?view=evaluate&model=`) must show that
// origin and fetch nothing from it before the click; after "Load from …" the study or model
// loads; Cancel loads nothing; a confirmed origin is not asked about again on that page; a study
// on the page's own origin loads without a question, and a model on the page's own origin too;
// a model URL the user types into the app's field is consent; javascript:, data: and file: URLs
// are refused with a message and the page keeps working.

import { createServer } from 'node:http';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const webDist = resolve(process.argv[2] ?? join(root, 'target', 'site'));
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const fixtures = join(root, 'tests', 'fixtures');

let failures = 0;
function check(condition, message) {
  if (condition) {
    console.log(`  ok   ${message}`);
  } else {
    failures += 1;
    console.log(`  FAIL ${message}`);
  }
}

// The other site: a static server on another loopback port that logs every request and allows
// cross-origin reads (so that, once confirmed, the browser can read what it serves).
const types = { '.json': 'application/json' };
function serveCounting(dir) {
  const log = [];
  const server = createServer((req, res) => {
    log.push(`${req.method} ${req.url}`);
    const file = join(dir, decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const headers = { 'access-control-allow-origin': '*' };
    if (!file.startsWith(dir) || !existsSync(file) || statSync(file).isDirectory()) {
      res.writeHead(404, headers).end();
      return;
    }
    res.writeHead(200, { ...headers, 'content-type': types[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, log })));
}

// A study folder: a manifest (`m.json`) naming two run files beside it, and `model` in it.
function writeStudy(dir, name, model) {
  mkdirSync(join(dir, 'runs'), { recursive: true });
  const runs = ['sst2-origin0', 'mnli-origin0'].map((r) => {
    cpSync(join(fixtures, 'runs', 'v1', `${r}.safetensors`), join(dir, 'runs', `${r}.safetensors`));
    const [task] = r.split('-');
    return { id: `prompt_tuning/${task}/origin0`, file: `runs/${r}.safetensors`, experiment: 'prompt_tuning', task, origin: 0 };
  });
  const manifest = { format: 'tpv-report', version: 1, name, runs, model: { url: model, name: 'llama_tied', bundled: false } };
  writeFileSync(join(dir, 'm.json'), JSON.stringify(manifest));
}
const copyModel = (dir) => cpSync(join(fixtures, 'models', 'llama_tied'), join(dir, 'model'), { recursive: true });

const tmp = mkdtempSync(join(tmpdir(), 'tpv-origins-'));
const homeDir = join(tmp, 'home');
const otherDir = join(tmp, 'other');
cpSync(webDist, homeDir, { recursive: true });
copyModel(homeDir);
copyModel(otherDir);
const other = await serveCounting(otherDir);
const otherOrigin = `http://127.0.0.1:${other.server.address().port}`;
writeStudy(join(homeDir, 'local'), 'home-study', `${otherOrigin}/model/`);
writeStudy(otherDir, 'other-study', 'model/');
const home = await serve(homeDir);
const base = `http://127.0.0.1:${home.address().port}/`;
console.log(`app at ${base}, the other site at ${otherOrigin}/`);

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const errors = [];
// True when `locator` shows up within `ms` (a missing element is a failed check, not a crash).
const appears = (locator, ms = 20000) => locator.waitFor({ timeout: ms }).then(() => true, () => false);
const requests = () => other.log.filter((l) => !l.includes('favicon'));
// Opens `query` on a fresh page (a fresh app: nothing confirmed yet).
async function open(context, query) {
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(String(e)));
  // A missing manifest.json beside the page is a 404; a refused or cancelled load is not an error.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('404')) errors.push(m.text()); });
  other.log.length = 0;
  await page.goto(`${base}${query}`);
  await page.getByTestId('tab-files').waitFor({ timeout: 30000 });
  return page;
}
// Waits for the question about the other origin, and a moment more for any stray request.
async function asked(page, what) {
  const confirm = page.getByTestId('origin-confirm');
  const shown = await appears(confirm);
  await page.waitForTimeout(1500);
  check(shown, `${what}: the page asks before loading from the other site`);
  check(requests().length === 0, `${what}: the other site got no request before the click (${JSON.stringify(requests())})`);
  if (!shown) return false;
  const name = await page.getByTestId('origin-name').textContent();
  const button = await page.getByTestId('origin-load').textContent();
  check(name === otherOrigin && button.includes(otherOrigin) && (await confirm.getAttribute('data-origin')) === otherOrigin,
    `${what}: the question shows the other origin ("${(await confirm.textContent()).slice(0, 140)}")`);
  return true;
}
const loadedModel = (page, ms = 60000) => appears(page.locator('[data-testid=model-status][data-loaded=true]'), ms);
const studyShown = (page) => page.waitForFunction(
  () => document.querySelector('[data-testid=study-status]')?.textContent.startsWith('Study'), null, { timeout: 30000 },
).then(() => true, () => false);

try {
  const context = await browser.newContext();

  // 1. A study on the page's own origin loads as before, without a question (relative and absolute).
  for (const m of ['local/m.json', `${base}local/m.json`]) {
    const page = await open(context, `?manifest=${encodeURIComponent(m)}`);
    const ok = await studyShown(page);
    check(ok && (await page.getByTestId('origin-confirm').count()) === 0 && (await page.getByTestId('run-row').count()) === 2,
      `same-origin manifest ${m}: the study loads without a question (${await page.getByTestId('study-status').textContent().catch(() => '?')})`);
    if (m !== 'local/m.json') {
      await page.close();
      continue;
    }
    // Its model is on the other site: the Load button asks first ("The study asks…"); Cancel loads nothing.
    await page.getByTestId('tab-evaluate').click();
    check((await page.getByTestId('model-url').inputValue()) === `${otherOrigin}/model/`, 'the study\'s model fills the URL field');
    await page.getByTestId('model-load').click();
    if (await asked(page, 'the study\'s model on the other site')) {
      check((await page.getByTestId('origin-confirm').textContent()).startsWith('The study asks to load a model'), 'the question says the study asks');
      await page.getByTestId('origin-cancel').click();
      await page.waitForTimeout(1000);
      check((await page.getByTestId('origin-confirm').count()) === 0 && requests().length === 0, 'Cancel: the question goes, nothing is fetched');
    }
    await page.close();
  }

  // 2. ?manifest= on the other site: asked first, then loaded; the origin is then trusted on this page.
  const manifestLink = `?manifest=${encodeURIComponent(`${otherOrigin}/m.json`)}`;
  {
    const page = await open(context, manifestLink);
    if (await asked(page, '?manifest= on the other site')) {
      await page.getByTestId('origin-load').click();
      const ok = await studyShown(page);
      check(ok && (await page.getByTestId('run-row').count()) === 2 && requests().includes('GET /m.json'),
        `after "Load from …" the study loads from the other site (${requests().length} requests)`);
      check((await page.getByTestId('origin-confirm').count()) === 0, 'the question is gone after the click');
      // Its model (on the confirmed origin) loads without a second question.
      await page.getByTestId('tab-evaluate').click();
      await page.getByTestId('model-load').click();
      const loaded = await loadedModel(page);
      check(loaded && (await page.getByTestId('origin-confirm').count()) === 0 && requests().includes('GET /model/config.json'),
        'a confirmed origin is not asked about again on the page: its model loads');
    }
    await page.close();
  }
  {
    const page = await open(context, manifestLink);
    if (await asked(page, '?manifest= on the other site (cancelled)')) {
      await page.getByTestId('origin-cancel').click();
      await page.waitForTimeout(1000);
      check(requests().length === 0 && (await page.getByTestId('run-row').count()) === 0,
        `Cancel: no study, no request (${await page.getByTestId('study-status').textContent().catch(() => '?')})`);
    }
    await page.close();
  }

  // 3. ?view=evaluate&model= on the other site: asked first, then loaded (into the worker).
  {
    const page = await open(context, `?view=evaluate&workers=1&model=${encodeURIComponent(`${otherOrigin}/model/`)}`);
    if (await asked(page, '?model= on the other site')) {
      check((await page.getByTestId('origin-confirm').textContent()).startsWith('This link asks to load a model'), 'the question says the link asks');
      await page.getByTestId('origin-load').click();
      const loaded = await loadedModel(page);
      check(loaded && requests().includes('GET /model/config.json') && requests().includes('GET /model/model.safetensors'),
        `after "Load from …" the model loads from the other site (${requests().length} requests)`);
    }
    await page.close();
  }

  // 4. A model on the page's own origin loads as before; one the user types in is consent.
  {
    const page = await open(context, '?view=evaluate&workers=1&model=model/');
    const loaded = await loadedModel(page);
    check(loaded && (await page.getByTestId('origin-confirm').count()) === 0 && requests().length === 0,
      'same-origin ?model=model/ loads without a question');
    await page.close();
  }
  {
    const page = await open(context, '?view=evaluate&workers=1');
    await page.getByTestId('model-url').fill(`${otherOrigin}/model/`);
    await page.getByTestId('model-load').click();
    const loaded = await loadedModel(page);
    check(loaded && (await page.getByTestId('origin-confirm').count()) === 0 && requests().includes('GET /model/config.json'),
      'a model URL typed into the field loads from the other site without a question');
    await page.close();
  }

  // 5. Not http(s): refused with a message, and the page keeps working.
  const refused = [
    ['manifest', 'javascript:alert(1)'],
    ['manifest', 'data:application/json,{"format":"tpv-report","version":1,"name":"x"}'],
    ['model', 'javascript:alert(1)'],
    ['model', 'data:application/octet-stream,AAAA'],
    ['model', 'file:///etc/hostname'],
  ];
  for (const [key, value] of refused) {
    const view = key === 'model' ? 'view=evaluate&' : '';
    const page = await open(context, `?${view}${key}=${encodeURIComponent(value)}`);
    const error = page.getByTestId(key === 'model' ? 'model-error' : 'study-error');
    const shown = await appears(error, 10000);
    const text = shown ? await error.textContent() : '';
    check(shown && text.includes('refused') && (await page.getByTestId('origin-confirm').count()) === 0,
      `${key}=${value.slice(0, 24)}: refused with a message ("${text.slice(0, 100)}")`);
    await page.getByTestId('tab-files').click();
    check(await appears(page.getByTestId('file-input'), 5000), `${key}=${value.slice(0, 24)}: the page keeps working`);
    await page.close();
  }
  check(errors.length === 0, `no page errors ${errors.length ? JSON.stringify(errors) : ''}`);
} finally {
  await browser.close();
  home.close();
  other.server.close();
}

if (failures > 0) {
  console.log(`${failures} origin check(s) failed`);
  process.exit(1);
}
console.log('origin tests passed');
