// Headless-Chromium test of the web app on a report folder:
//
//   node tests/browser/study.mjs [SITE_DIR]   (the trunk build, default target/site; TPV_BIN defaults to target/debug/tpv)
//
// Runs the tiny fixture study (tests/fixtures/study) with `tpv sweep`, writes its report with the web
// app (`tpv report --web SITE_DIR`), serves it on 127.0.0.1 and checks each view against the CLI:
// the runs table against the manifest; heatmap cells against `tpv similarity --across-origins --json`
// (1e-6); a composition downloaded from the page against `tpv combine` (values 1e-6, same
// expression); the URL reopening a view; the few-shot curves; the Evaluate view (the fixture LLaMA
// and T5 in a Web Worker, loaded by URL and from files) against `tpv eval` (same predictions,
// losses to 1e-4; in a pool of workers and in one) for a run, the Compose view's result, an ATTEMPT run and pasted examples; cancel; corrupt files show an error and the
// page keeps working. TPV_SCREENSHOTS=DIR saves a screenshot of each view there.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const webDist = resolve(process.argv[2] ?? join(root, 'target', 'site'));
const tpvBin = process.env.TPV_BIN ?? join(root, 'target', 'debug', 'tpv');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const shots = process.env.TPV_SCREENSHOTS;

let failures = 0;
function check(condition, message) {
  if (condition) {
    console.log(`  ok   ${message}`);
  } else {
    failures += 1;
    console.log(`  FAIL ${message}`);
  }
}
const tpv = (...args) => execFileSync(tpvBin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const close = (a, b, tol = 1e-6) => Math.abs(a - b) <= tol;


// A safetensors file: its tensors (F32 only) and its metadata.
function readSafetensors(bytes) {
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  const data = bytes.subarray(8 + n);
  const tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__' || t.dtype !== 'F32') continue;
    const [a, b] = t.data_offsets;
    const slice = data.subarray(a, b);
    tensors[name] = Array.from({ length: (b - a) / 4 }, (_, i) => slice.readFloatLE(i * 4));
  }
  return { tensors, metadata: header.__metadata__ ?? {} };
}

// 1. The study, the report, the origin files for the CLI's combine.
const tmp = mkdtempSync(join(tmpdir(), 'tpv-study-'));
const studyDir = join(tmp, 'study');
const site = join(tmp, 'site');
tpv('sweep', join(root, 'tests', 'fixtures', 'study', 'study.toml'), '--set', `study.output=${JSON.stringify(studyDir)}`);
tpv('report', studyDir, '-o', site, '--web', webDist);
tpv('origins', '--model', join(root, 'tests', 'fixtures', 'models', 'llama_tied'), '--count', '2', '--tokens', '3',
  '--seed', '7', '--sample-vocab', '-o', join(tmp, 'origins'));
const manifest = JSON.parse(readFileSync(join(site, 'manifest.json'), 'utf8'));
const pt = ['a/origin0', 'b/origin0', 'a/origin1', 'b/origin1'].map((p) => join(studyDir, 'prompt_tuning', p, 'prompt.safetensors'));

const server = await serve(site);
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const errors = [];
const snap = async (page, name) => {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
};
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('404')) errors.push(m.text()); });
  const t0 = Date.now();
  await page.goto(base);
  const status = page.getByTestId('study-status');
  await status.waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.querySelector('[data-testid=study-status]')?.textContent.startsWith('Study'), null, { timeout: 30000 });
  console.log(`report at ${base}: ${await status.textContent()} (${Date.now() - t0} ms)`);

  // 2. Runs: every run of the manifest, sortable, filterable.
  const rows = page.getByTestId('run-row');
  check((await rows.count()) === manifest.runs.length, `runs table: ${await rows.count()} rows = manifest's ${manifest.runs.length}`);
  await page.getByTestId('runs-filter').fill('prompt_tuning');
  check((await rows.count()) === 4, 'runs table: the filter keeps the 4 prompt-tuning runs');
  await page.getByTestId('runs-filter').fill('');
  await page.getByTestId('sort-shots').click();
  await page.getByTestId('sort-shots').click();
  const firstShots = await rows.first().locator('td').nth(4).textContent();
  check(firstShots === '8', `runs table: sorted by shots, descending, first ${firstShots}`);
  check(page.url().includes('sort=-shots'), 'runs table: the sort is in the URL');
  await snap(page, 'runs');

  // 3. Similarity: heatmap cells = tpv similarity --across-origins --json.
  const t1 = Date.now();
  await page.getByTestId('tab-similarity').click();
  await page.getByTestId('heatmap-cell').first().waitFor({ timeout: 20000 });
  console.log(`  first heatmap ${Date.now() - t1} ms after the click`);
  for (const [vectors, measure] of [[true, 'cosine-mean'], [false, 'cosine-mean'], [true, 'cosine-flat']]) {
    if (!vectors) await page.getByTestId('sim-prompts').check();
    else await page.getByTestId('sim-vectors').check();
    await page.getByTestId('sim-measure').selectOption(measure);
    const want = JSON.parse(tpv('similarity', '--across-origins', '--json', '--measure', measure, ...(vectors ? ['--vectors'] : []), ...pt));
    await page.waitForTimeout(100);
    const cells = await page.getByTestId('heatmap-cell').evaluateAll((els) => els.map((e) => ({
      row: e.dataset.row, col: e.dataset.col, value: e.dataset.value,
    })));
    let worst = 0;
    let compared = 0;
    for (const c of cells) {
      const i = want.tasks.indexOf(c.row);
      const j = want.tasks.indexOf(c.col);
      const w = want.matrix[i]?.[j];
      if (w === null || w === undefined) {
        check(c.value === '', `similarity: ${c.row} × ${c.col} omitted on both sides`);
        continue;
      }
      worst = Math.max(worst, Math.abs(Number(c.value) - w));
      compared += 1;
    }
    check(compared === want.tasks.length ** 2 && worst <= 1e-6,
      `similarity (${vectors ? 'vectors' : 'prompts'}, ${measure}): ${compared} cells = tpv similarity --json (max diff ${worst.toExponential(1)})`);
  }
  // The origins × origins map of a pair of tasks.
  await page.getByTestId('sim-vectors').check();
  await page.getByTestId('sim-measure').selectOption('cosine-mean');
  await page.locator('[data-testid=heatmap-cell][data-row=a][data-col=b] button').click();
  const want = JSON.parse(tpv('similarity', '--across-origins', '--json', '--vectors', ...pt));
  const pair = await page.getByTestId('pair-cell').evaluateAll((els) => els.map((e) => e.dataset.value));
  const flat = want.pairs[0][1].flat().map((v) => (v === null ? '' : v));
  check(pair.length === flat.length && pair.every((v, k) => (v === '' ? flat[k] === '' : close(Number(v), flat[k]))),
    `similarity: the a × b origins map = tpv's pairs (${pair.length} cells)`);
  check(page.url().includes('pair=a%2Cb') || page.url().includes('pair=a,b'), 'similarity: the chosen pair is in the URL');
  await snap(page, 'similarity');
  // Figures (issue 18): the downloaded SVGs' cells are the view's values, and those of the
  // figures tpv aggregate wrote into the report.
  const svgCells = (text) => [...text.matchAll(/<rect class="cell"[^>]*data-row="([^"]*)" data-col="([^"]*)" data-value="([^"]*)"/g)]
    .map((m) => ({ row: m[1], col: m[2], value: m[3] }));
  const viewCells = await page.getByTestId('heatmap-cell').evaluateAll((els) => els
    .filter((e) => e.dataset.value !== '').map((e) => ({ row: e.dataset.row, col: e.dataset.col, value: e.dataset.value })));
  const [tasksSvg] = await Promise.all([page.waitForEvent('download'), page.getByTestId('svg-tasks').click()]);
  const tasksText = readFileSync(await tasksSvg.path(), 'utf8');
  const fromSvg = svgCells(tasksText);
  const sameCells = fromSvg.length === viewCells.length && fromSvg.every((c, k) => c.row === viewCells[k].row
    && c.col === viewCells[k].col && Number(c.value) === Number(viewCells[k].value));
  check(sameCells && tasksText.includes('cosine-mean'), `figures: the downloaded tasks × tasks SVG has the view's ${fromSvg.length} cells`);
  const siteSvg = svgCells(readFileSync(join(site, 'figures', 'similarity_vectors.svg'), 'utf8'));
  const byCell = new Map(fromSvg.map((c) => [`${c.row}|${c.col}`, Number(c.value)]));
  const worstSite = Math.max(...siteSvg.map((c) => Math.abs(Number(c.value) - (byCell.get(`${c.row}|${c.col}`) ?? Infinity))));
  check(siteSvg.length === fromSvg.length && worstSite <= 1e-6, `figures: the report's similarity_vectors.svg = the view's (max diff ${worstSite.toExponential(1)})`);
  const [tasksPng] = await Promise.all([page.waitForEvent('download'), page.getByTestId('png-tasks').click()]);
  const png = readFileSync(await tasksPng.path());
  const svgWidth = Number(tasksText.match(/<svg[^>]* width="([0-9.]+)"/)[1]);
  check(png.subarray(1, 4).toString() === 'PNG' && png.readUInt32BE(16) === Math.round(2 * svgWidth),
    `figures: the PNG download is the figure at twice its size (${png.readUInt32BE(16)} × ${png.readUInt32BE(20)} px, ${png.length} bytes)`);
  const [pairsSvg] = await Promise.all([page.waitForEvent('download'), page.getByTestId('svg-pairs').click()]);
  const pairCells = svgCells(readFileSync(await pairsSvg.path(), 'utf8'));
  const ab = pairCells.filter((c) => c.row.startsWith('a@') && c.col.startsWith('b@')).map((c) => Number(c.value));
  const flatAb = want.pairs[0][1].flat().filter((v) => v !== null);
  check(ab.length === flatAb.length && ab.every((v, k) => close(v, flatAb[k])), `figures: the pairs grid's a × b panel = tpv's pairs (${ab.length} cells)`);

  // 4. Compose: θ₀ + 0.8·ties(1·τ_a, 0.5·τ_b) downloaded = tpv combine.
  await page.getByTestId('tab-compose').click();
  await page.getByTestId('compose-origin').selectOption('origin0');
  await page.locator('[data-testid=compose-vector][data-id="prompt_tuning/a/origin0"] input[type=checkbox]').check();
  await page.locator('[data-testid=compose-vector][data-id="prompt_tuning/b/origin0"] input[type=checkbox]').check();
  await page.locator('[data-testid=compose-vector][data-id="prompt_tuning/b/origin0"] input[type=number]').fill('0.5');
  await page.locator('[data-testid=compose-vector][data-id="prompt_tuning/b/origin0"] input[type=number]').press('Enter');
  await page.getByTestId('compose-lambda').fill('0.8');
  await page.getByTestId('compose-lambda').press('Enter');
  await page.getByTestId('compose-method').selectOption('ties');
  await page.getByTestId('compose-density').fill('0.5');
  await page.getByTestId('compose-density').press('Enter');
  await page.getByTestId('compose-result').waitFor({ timeout: 10000 });
  console.log('  compose URL', page.url());
  const composeUrl = page.url();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-run').click()]);
  const webFile = join(tmp, 'web-composed.safetensors');
  await download.saveAs(webFile);
  const cliFile = join(tmp, 'cli-composed.safetensors');
  tpv('combine', '--origin', join(tmp, 'origins', 'origin0.safetensors'), '--vector', pt[0], '--vector', pt[1],
    '--weight', '1', '--weight', '0.5', '--lambda', '0.8', '--method', 'ties', '--density', '0.5', '-o', cliFile);
  const web = readSafetensors(readFileSync(webFile));
  const cli = readSafetensors(readFileSync(cliFile));
  const names = Object.keys(cli.tensors).sort();
  check(names.length > 0 && JSON.stringify(Object.keys(web.tensors).sort()) === JSON.stringify(names), `compose: the same tensors (${names})`);
  let worst = 0;
  for (const n of names) {
    cli.tensors[n].forEach((v, k) => { worst = Math.max(worst, Math.abs(v - (web.tensors[n]?.[k] ?? Infinity))); });
  }
  check(worst <= 1e-6, `compose: downloaded run file = tpv combine (max diff ${worst})`);
  const expr = (m) => JSON.parse(m.tpv ?? '{}').expression;
  check(expr(web.metadata) && expr(web.metadata) === expr(cli.metadata), `compose: same expression "${expr(web.metadata)}"`);
  const [peftDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-peft').click()]);
  check(peftDownload.suggestedFilename() === 'adapter_model.safetensors', 'compose: peft adapter download');
  await snap(page, 'compose');

  // 5. The URL reopens the view.
  const page2 = await context.newPage();
  await page2.goto(page.url());
  const expression2 = await page2.getByTestId('compose-expression').textContent({ timeout: 20000 });
  check(expression2 === expr(cli.metadata), 'URL state: the link reopens the same composition');
  // A link with an unknown method is an error in the view, not a silent sum (issue 16).
  check(composeUrl.includes('method=ties'), 'compose: the method is in the URL');
  await page2.goto(composeUrl.replace('method=ties', 'method=nonsense'));
  const unknown = await page2.getByTestId('compose-error').textContent({ timeout: 20000 });
  check(unknown.includes('unknown merge method') && unknown.includes('nonsense'), `compose: an unknown method= is an error ("${unknown}")`);
  await page2.close();

  // 6. Curves: few-shot (5 inits for c) and training curves.
  await page.getByTestId('tab-curves').click();
  await page.getByTestId('curves-run').waitFor({ timeout: 10000 });
  const series = await page.locator('figure').first().getByTestId('series').count();
  check(series === 5, `curves: the few-shot chart of c has ${series} inits (random, spot_a, spot_b, attempt, tpv_sum)`);
  check((await page.locator('figure').count()) >= 3, 'curves: training curves drawn');
  // A chart's SVG download is the chart shown (the same shared figure).
  const shown = await page.locator('figure').first().locator('circle.point').evaluateAll((els) => els.map((e) => e.dataset.value));
  const [chartSvg] = await Promise.all([page.waitForEvent('download'), page.locator('figure').first().getByTestId('chart-svg').click()]);
  const saved = [...readFileSync(await chartSvg.path(), 'utf8').matchAll(/<circle class="point"[^>]*data-value="([^"]*)"/g)].map((m) => m[1]);
  check(shown.length > 0 && JSON.stringify(saved) === JSON.stringify(shown), `curves: the downloaded SVG has the chart's ${shown.length} points`);
  await snap(page, 'curves');

  // 7. Evaluate: the fixture model in a Web Worker = tpv eval (predictions equal, losses to 1e-4).
  const modelDir = join(root, 'tests', 'fixtures', 'models', 'llama_tied');
  const modelFiles = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => join(modelDir, f));
  // `tpv report` bundled the study's model (--bundle-model auto: the fixture is small).
  check(modelFiles.every((f) => readFileSync(join(site, 'model', f.split('/').pop())).equals(readFileSync(f))),
    'report: the study\'s model is bundled in SITE/model/');
  const evaluateAndCompare = async (what, cliArgs, model = modelDir) => {
    await page.getByTestId('eval-run').click();
    await page.locator('[data-testid=eval-results][data-running=false]').waitFor({ timeout: 120000 });
    const got = await page.getByTestId('eval-example').evaluateAll((els) => els.map((e) => ({
      prediction: e.dataset.prediction, loss: Number(e.dataset.loss), target: e.dataset.target,
    })));
    const cli = JSON.parse(tpv('eval', '--json', '--model', model, ...cliArgs));
    const n = cli.examples.length;
    const samePreds = got.length === n && got.every((g, i) => g.prediction === cli.examples[i].prediction);
    const lossDiff = Math.max(...got.map((g, i) => Math.abs(g.loss - cli.examples[i].loss)));
    check(n > 0 && samePreds && lossDiff <= 1e-4,
      `evaluate (${what}): ${got.length} predictions = tpv eval's ${n}, losses within ${lossDiff.toExponential(1)}`);
    const acc = Number(await page.getByTestId('eval-accuracy').getAttribute('data-value'));
    check(close(acc, cli.exact_match), `evaluate (${what}): accuracy ${acc} = tpv eval's exact match ${cli.exact_match}`);
    const counts = await page.getByTestId('confusion-cell').evaluateAll((els) => els.map((e) => Number(e.dataset.value)));
    const cliCounts = cli.confusion.counts.flat();
    check(JSON.stringify(counts) === JSON.stringify(cliCounts), `evaluate (${what}): confusion matrix = tpv eval's ${JSON.stringify(cliCounts)}`);
    const speed = await page.getByTestId('eval-speed').textContent();
    console.log(`  evaluate (${what}): ${speed}`);
  };
  // (a) One click: a run on a task's bundled test examples, the report's own model (the URL field
  //     starts with it) loaded by the Evaluate button itself.
  //     A pool of 3 workers (`workers=3`) with batches of 1: the batches may come back out of order,
  //     and the view puts each result at its example.
  await page.goto(`${base}?view=evaluate&prompt=${encodeURIComponent('prompt_tuning/a/origin0')}&examples=a&batch=1&workers=3`);
  await page.locator('[data-testid=eval-examples] option[value=a]').waitFor({ state: 'attached', timeout: 20000 });
  await page.getByTestId('report-model').waitFor({ timeout: 20000 });
  const modelUrl = await page.getByTestId('model-url').inputValue();
  check(modelUrl === new URL('model/', base).href, `evaluate: the URL field starts with the report's model (${modelUrl})`);
  await evaluateAndCompare('a@origin0 on examples/a.json', ['--prompt', pt[0], '--data', join(site, 'examples', 'a.json')]);
  const poolStatus = await page.getByTestId('model-status').textContent();
  const speedText = await page.getByTestId('eval-speed').textContent();
  check(poolStatus.includes('in 3 workers') && speedText.includes('3 workers'),
    `evaluate: the model loaded in a pool of 3 workers, which ran the evaluation ("${poolStatus.split(':')[0]}…")`);
  await snap(page, 'evaluate');
  // Readable prompts (issue 18): the prompt's nearest vocabulary tokens, computed in the worker,
  // are those of tpv inspect --nearest-tokens.
  await page.getByTestId('eval-nearest').click();
  await page.getByTestId('nearest-row').first().waitFor({ timeout: 30000 });
  const webNear = await page.getByTestId('nearest-row').evaluateAll((rows) => rows.map((r) =>
    [...r.querySelectorAll('[data-testid=near-token]')].map((t) => ({ token: Number(t.dataset.token), cosine: Number(t.dataset.cosine) }))));
  const cliNear = JSON.parse(tpv('inspect', '--json', '--nearest-tokens', '5', '--model', modelDir, pt[0]))[0].nearest_tokens;
  const sameTokens = webNear.length === cliNear.length && webNear.length > 0
    && webNear.every((row, i) => row.length === cliNear[i].length && row.every((t, j) => t.token === cliNear[i][j].token));
  const cosDiff = Math.max(...webNear.flatMap((row, i) => row.map((t, j) => Math.abs(t.cosine - cliNear[i][j].cosine))));
  check(sameTokens && cosDiff <= 1e-6,
    `nearest tokens: the view's ${webNear.length} virtual tokens × 5 = tpv inspect --nearest-tokens (cosines within ${cosDiff.toExponential(1)})`);
  // (b) The Compose view's result (the composition above) on task b; the model loaded with the Load button.
  await page.goto(composeUrl);
  await page.getByTestId('evaluate-composed').click();
  await page.getByTestId('model-url').fill('model/');
  await page.getByTestId('model-load').click();
  await page.locator('[data-testid=model-status][data-loaded=true]').waitFor({ timeout: 60000 });
  await page.locator('[data-testid=eval-examples] option[value=b]').waitFor({ state: 'attached', timeout: 20000 });
  await page.getByTestId('eval-examples').selectOption('b');
  await page.waitForTimeout(300);
  await evaluateAndCompare('the composition on examples/b.json', ['--prompt', cliFile, '--data', join(site, 'examples', 'b.json')]);
  // (b2) An ATTEMPT run: each example under its own prompt, mixed in the worker from the run's
  // sources by its attention module (tpv_shared::attempt, as tpv eval mixes them).
  const attemptRun = 'transfer/c/attempt/4shot/origin0';
  await page.getByTestId('eval-prompt').selectOption(attemptRun);
  await page.locator('[data-testid=eval-examples] option[value=c]').waitFor({ state: 'attached', timeout: 20000 });
  await page.getByTestId('eval-examples').selectOption('c');
  await page.waitForTimeout(300);
  await evaluateAndCompare('an ATTEMPT run on examples/c.json', ['--prompt', join(studyDir, attemptRun, 'prompt.safetensors'), '--data', join(site, 'examples', 'c.json')]);
  // (c) Pasted examples, no prompt, the model opened as files.
  const pastedLines = '{"input": "w5 w17 w33", "target": "w12"}\n{"input": "w40 w2", "target": "w7"}\n{"input": "w9", "target": "w9"}\n';
  const pastedFile = join(tmp, 'pasted.jsonl');
  writeFileSync(pastedFile, pastedLines);
  //     One worker (the Workers field applies at the next load).
  await page.getByTestId('model-workers').fill('1');
  await page.getByTestId('model-workers').dispatchEvent('change');
  await page.getByTestId('model-files').setInputFiles(modelFiles);
  await page.locator('[data-testid=model-status][data-loaded=true]').waitFor({ timeout: 60000 });
  check((await page.getByTestId('model-status').textContent()).includes('in 1 worker'), 'evaluate: the Workers field sizes the next load\'s pool (1)');
  await page.getByTestId('eval-prompt').selectOption('@none');
  await page.getByTestId('eval-examples').selectOption('@paste');
  await page.getByTestId('eval-paste').fill(pastedLines);
  await evaluateAndCompare('the model alone on pasted examples', ['--data', pastedFile]);
  check(page.url().includes('view=evaluate'), 'evaluate: the view is in the URL');
  // Cancel: 300 examples one per batch, cancelled after the first results.
  await page.getByTestId('eval-paste').fill(pastedLines.repeat(100));
  await page.getByTestId('eval-n').fill('300');
  await page.getByTestId('eval-batch').fill('1');
  await page.getByTestId('eval-run').click();
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=eval-results]')?.dataset.done) >= 2, null, { timeout: 60000 });
  await page.getByTestId('eval-cancel').click({ timeout: 5000 });
  await page.locator('[data-testid=eval-results][data-running=false]').waitFor({ timeout: 30000 });
  const doneAt = Number(await page.getByTestId('eval-results').getAttribute('data-done'));
  const cancelText = await page.getByTestId('eval-status').textContent();
  check(doneAt >= 2 && doneAt < 300 && cancelText.includes('Cancelled'), `evaluate: cancel stops the run (${doneAt} of 300 done: "${cancelText.split('·')[0].trim()}")`);
  await page.getByTestId('eval-paste').fill(pastedLines);
  await page.getByTestId('eval-batch').fill('8');
  // (d) A T5 model (the seq2seq path: encoder, decoder with its cache) on the same pasted examples.
  const t5Dir = join(root, 'tests', 'fixtures', 'models', 't5_gated_untied');
  const t5Files = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => join(t5Dir, f));
  await page.getByTestId('model-files').setInputFiles(t5Files);
  await page.waitForFunction(() => document.querySelector('[data-testid=model-status][data-loaded=true]')?.textContent.includes('t5'), null, { timeout: 60000 });
  await evaluateAndCompare('T5 on pasted examples', ['--data', pastedFile], t5Dir);
  // (e) A corrupt model file: an error, and the page keeps working.
  const badWeights = join(tmp, 'model.safetensors');
  writeFileSync(badWeights, readFileSync(modelFiles[1]).subarray(0, 300));
  await page.getByTestId('model-files').setInputFiles([modelFiles[0], badWeights, modelFiles[2]]);
  await page.getByTestId('model-error').waitFor({ timeout: 30000 });
  check((await page.getByTestId('model-error').getAttribute('role')) === 'alert', 'evaluate: a corrupt model file shows an error');
  await page.getByTestId('model-files').setInputFiles(modelFiles);
  await page.locator('[data-testid=model-status][data-loaded=true]').waitFor({ timeout: 60000 });
  await evaluateAndCompare('after the error, the model reloaded', ['--data', pastedFile]);

  // 8. A corrupt file: an error, and the page keeps working.
  await page.getByTestId('tab-files').click();
  const corrupt = join(tmp, 'corrupt.safetensors');
  writeFileSync(corrupt, readFileSync(pt[0]).subarray(0, 200));
  await page.getByTestId('file-input').setInputFiles([corrupt]);
  await page.getByTestId('file-error').waitFor({ timeout: 10000 });
  check((await page.getByTestId('file-error').getAttribute('role')) === 'alert', 'corrupt file: an error is shown');
  await snap(page, 'files');
  await page.getByTestId('tab-runs').click();
  check((await page.getByTestId('run-row').count()) === manifest.runs.length, 'after the error the runs view still works');
  // Keyboard: the view tabs are buttons reachable with Tab.
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement?.getAttribute('role') === 'tab' || document.activeElement?.tagName === 'A'),
    'keyboard: Tab reaches the links and view tabs');

  // 9. The URL the main command serves: `tpv report --serve` (what `tpv demo` ends with) prints
  //    it; the web app there loads the study and draws the heatmap cells.
  const served = spawn(tpvBin, ['report', studyDir, '-o', join(tmp, 'served-site'), '--web', webDist, '--serve', '--port', '0'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const url = await new Promise((ok, fail) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error(`no URL from tpv report --serve: ${out}`)), 30000);
      served.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
        if (m) { clearTimeout(timer); ok(m[1]); }
      });
      served.on('exit', (code) => fail(new Error(`tpv report --serve exited (${code}): ${out}`)));
    });
    await page.goto(`${url}?view=similarity`);
    await page.getByTestId('heatmap-cell').first().waitFor({ timeout: 30000 });
    const cells = await page.getByTestId('heatmap-cell').count();
    check(cells > 0, `tpv report --serve: ${url} shows the study's heatmaps (${cells} cells)`);
  } finally {
    served.kill();
  }
  check(errors.length === 0, `no page errors ${errors.length ? JSON.stringify(errors) : ''}`);
} finally {
  await browser.close();
  server.close();
}

if (failures > 0) {
  console.log(`${failures} study browser check(s) failed`);
  process.exit(1);
}
console.log('study browser tests passed');
