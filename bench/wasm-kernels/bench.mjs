// Times the exports of the wasm-kernels module (run.sh builds it): GFLOP/s of gemm's simd128
// kernel and of tpv's panel kernel at SmolLM2-135M's shapes (an evaluation batch's prefill of
// 320 rows, a decoding step of 8 rows, and the 49,152-word LM head), best of 7 after 2 warm-ups,
// and the peak loop. Run with --no-liftoff: V8 would otherwise leave a single long call in its
// baseline compiler, while the browser's hot functions are optimized within the first batch.
import { readFileSync } from 'node:fs';

const { instance } = await WebAssembly.instantiate(readFileSync(process.argv[2]), {});
const e = instance.exports;
const shapes = [[320, 576, 1536], [320, 1536, 576], [320, 576, 576], [320, 576, 192], [8, 576, 1536], [8, 1536, 576], [8, 576, 49152]];
const best = (f) => {
  f(); f();
  let t = Infinity;
  for (let r = 0; r < 7; r++) { const t0 = performance.now(); f(); t = Math.min(t, performance.now() - t0); }
  return t;
};
console.log('m × k × n          gemm (GFLOP/s)  panels (GFLOP/s)  largest difference');
for (const [m, k, n] of shapes) {
  const x = e.alloc(m * k), w = e.alloc(n * k), y1 = e.alloc(m * n), y2 = e.alloc(m * n);
  const panels = e.pack(k, n, w);
  const tg = best(() => e.gemm_product(m, k, n, x, w, y1));
  const tp = best(() => e.panel_product(m, k, n, x, panels, y2));
  const a = new Float32Array(e.memory.buffer, y1, m * n), b = new Float32Array(e.memory.buffer, y2, m * n);
  let diff = 0;
  for (let i = 0; i < m * n; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]));
  const rate = (t) => (2 * m * k * n / t / 1e6).toFixed(1).padStart(14);
  console.log(`${`${m} × ${k} × ${n}`.padEnd(18)} ${rate(tg)}  ${rate(tp)}    ${diff.toExponential(1)}`);
}
const iters = 2e7;
const t0 = performance.now();
e.peak(iters);
console.log(`peak loop (12 chains of mul + add on 4 lanes): ${(iters * 12 * 8 / (performance.now() - t0) / 1e6).toFixed(1)} GFLOP/s`);
