//! The similarity matrix (flattened cosine over a set of prompts): tpv's kernel and ndarray's.
use tpv_shared::PromptTensor;
use tpv_shared::similarity::{Measure, matrix};

pub fn ours(items: &[PromptTensor]) -> Vec<Vec<f64>> {
    let refs: Vec<&PromptTensor> = items.iter().collect();
    matrix(&refs, Measure::CosineFlat).unwrap_or_default()
}

#[cfg(feature = "nd")]
pub fn nd(items: &[PromptTensor]) -> Vec<Vec<f64>> {
    use ndarray::Array2;
    let n = items.len();
    let len = items.first().map_or(0, PromptTensor::len);
    let mut x = Array2::<f64>::zeros((n, len));
    for (i, t) in items.iter().enumerate() {
        for (j, v) in t.as_slice().iter().enumerate() {
            x[[i, j]] = f64::from(*v);
        }
    }
    let g = x.dot(&x.t());
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let d = (g[[i, i]] * g[[j, j]]).sqrt();
                    if d == 0.0 { 0.0 } else { g[[i, j]] / d }
                })
                .collect()
        })
        .collect()
}

#[unsafe(no_mangle)]
pub extern "C" fn run(n: usize, r: usize, d: usize) -> f64 {
    let items = sample(n, r, d);
    #[cfg(feature = "nd")]
    let m = nd(&items);
    #[cfg(not(feature = "nd"))]
    let m = ours(&items);
    m.iter().flatten().sum()
}

pub fn sample(n: usize, r: usize, d: usize) -> Vec<PromptTensor> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            let data = (0..r * d)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            PromptTensor::new(r, d, data).expect("r × d values")
        })
        .collect()
}
