//! Exports for `bench.mjs`: buffers in the module's memory, one product per call (timed from
//! JavaScript), and a peak loop. Raw pointers cross the boundary: this is a probe, not tpv.
#![allow(unsafe_code, clippy::missing_safety_doc)]

use core::arch::wasm32::{f32x4_add, f32x4_extract_lane, f32x4_mul, f32x4_splat};

// The kernel itself, as tpv-shared compiles it (it needs nothing else; depending on tpv-shared
// would bring wasm-bindgen's imports into the module).
#[path = "../../../shared/src/model/panel.rs"]
#[allow(dead_code)]
mod panel;

/// `n` floats of a fixed pseudo-random pattern in [-0.5, 0.5), leaked.
#[unsafe(no_mangle)]
pub extern "C" fn alloc(n: usize) -> *mut f32 {
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    Vec::leak(v).as_mut_ptr()
}

/// y `[m, n]` = x `[m, k]` · Wᵀ by gemm, W `[n, k]` read transposed (candle's x.matmul(w.t())).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_product(m: usize, k: usize, n: usize, x: *const f32, w: *const f32, y: *mut f32) {
    unsafe {
        gemm::gemm(
            m, n, k, y, 1, n as isize, false, x, 1, k as isize, w, k as isize, 1, 0.0, 1.0, false, false, false,
            gemm::Parallelism::None,
        );
    }
}

/// W `[n, k]` packed into panels (what loading does once per layer), leaked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pack(k: usize, n: usize, w: *const f32) -> *const f32 {
    let w = unsafe { std::slice::from_raw_parts(w, n * k) };
    Vec::leak(panel::pack(w, n, k)).as_ptr()
}

/// y `[m, n]` = x `[m, k]` · Wᵀ from panels (of `pack`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn panel_product(m: usize, k: usize, n: usize, x: *const f32, panels: *const f32, y: *mut f32) {
    let (x, panels) = unsafe {
        (
            std::slice::from_raw_parts(x, m * k),
            std::slice::from_raw_parts(panels, n.div_ceil(panel::NR) * panel::NR * k),
        )
    };
    let out = panel::product(x, m, k, panels, n);
    unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), y, m * n) };
}

/// Twelve independent chains of a multiply then an add on four lanes: the engine's rate for
/// the operations a simd128 product is made of (2 · 4 · 12 flops per iteration).
#[unsafe(no_mangle)]
pub extern "C" fn peak(iters: usize) -> f32 {
    let (x, y) = (f32x4_splat(1.0001), f32x4_splat(0.9999));
    let mut acc = [f32x4_splat(0.0); 12];
    for i in 0..iters {
        if i % 1024 == 0 {
            acc = core::hint::black_box(acc);
        }
        for a in acc.iter_mut() {
            *a = f32x4_add(f32x4_mul(*a, x), y);
        }
    }
    let s = acc.iter().fold(f32x4_splat(0.0), |s, a| f32x4_add(s, *a));
    f32x4_extract_lane::<0>(s)
}
