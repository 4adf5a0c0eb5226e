//! Reading tensors back to the host. tpv's code reads a tensor only through these functions
//! (clippy's `disallowed-methods` refuses candle's `to_scalar`/`to_vec*` elsewhere), so every
//! read is counted: on a GPU a read waits for everything queued before it, and a training step
//! makes none (the step's loss and gradient norm stay on the device until the loop reads them
//! once per logging interval; `trainer/tests/train_parity.rs` counts them).

use std::cell::Cell;

use candle_core::{Result, Tensor, WithDType};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// How many reads this thread has made so far.
pub fn reads() -> u64 {
    READS.with(Cell::get)
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
}

/// A scalar tensor's value.
#[allow(clippy::disallowed_methods, reason = "the counted read")]
pub fn scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    count();
    t.to_scalar()
}

/// A vector's values.
#[allow(clippy::disallowed_methods, reason = "the counted read")]
pub fn vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    t.to_vec1()
}

/// A matrix's rows.
#[allow(clippy::disallowed_methods, reason = "the counted read")]
pub fn vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    count();
    t.to_vec2()
}

/// Every value of any tensor, flattened, as f32.
pub fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    vec1(&t.flatten_all()?.to_dtype(candle_core::DType::F32)?)
}
