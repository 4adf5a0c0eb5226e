//! Shared by the native (`tests/arith.rs`) and browser (`tests/wasm.rs`) tests: a similarity
//! matrix gives each pair the bits of that pair's own similarity. In wasm SIMD the Gram kernel
//! takes four columns at a time, then the rest; 9 prompts of 3×701 values (over one 1,024-value
//! block, not a multiple of 4) take every path.

use tpv_shared::merge::SplitMix64;
use tpv_shared::similarity::{Measure, matrix, similarity};
use tpv_shared::tensor::PromptTensor;

pub fn assert_matrix_bits_equal_pairs() {
    let mut rng = SplitMix64::new(3);
    let ts: Vec<PromptTensor> = (0..9)
        .map(|_| PromptTensor::new(3, 701, (0..3 * 701).map(|_| rng.next_f64() as f32 - 0.5).collect()).unwrap())
        .collect();
    let refs: Vec<&PromptTensor> = ts.iter().collect();
    for measure in [Measure::CosineFlat, Measure::CosineMean, Measure::MeanAbsDiff] {
        let m = matrix(&refs, measure).unwrap();
        for i in 0..ts.len() {
            for j in 0..ts.len() {
                let one = similarity(&ts[i], &ts[j], measure).unwrap();
                assert_eq!(
                    m[i][j].to_bits(),
                    one.to_bits(),
                    "{measure:?} [{i}][{j}]: {} vs {one}",
                    m[i][j]
                );
            }
        }
    }
}
