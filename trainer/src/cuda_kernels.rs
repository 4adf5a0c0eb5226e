//! The CUDA twins of `tpv_shared::model::fused`'s kernels (feature `cuda`): `kernels/fused.cu`,
//! compiled to PTX by `build.rs`, launched on candle's stream, installed into
//! `tpv_shared::model::gpu` by [`install`] at start-up. With them a training step on a GPU runs
//! each softmax, RMS norm, rotary embedding, SwiGLU and cross-entropy (and their gradients) as one
//! kernel instead of candle's many, and dropout's masks are drawn on the GPU (the CPU's values)
//! rather than on the host and copied. `tests/cuda_kernels.rs` compares each with its CPU twin.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Result, bail};
use half::bf16;
use tpv_shared::model::gpu::{Arg, CudaKernels};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "tpv-fused";

/// The kernels of `kernels/fused.cu`.
struct Fused;

static FUSED: Fused = Fused;

/// Makes the fused ops run their CUDA kernels on CUDA tensors (once per process).
pub fn install() {
    tpv_shared::model::gpu::install_cuda(&FUSED);
}

/// A floating-point element type the kernels have an entry point for.
trait Float: CudaDType + DeviceRepr {
    const SUFFIX: &'static str;
}

impl Float for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Float for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// Runs `$f::<T>(args)` with T the element type of storage `$s` (f32 or bf16).
macro_rules! by_dtype {
    ($op:literal, $s:expr, $f:ident($($a:expr),*)) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            dt => bail!("{} on CUDA: {dt:?} (f32 or bf16 expected)", $op),
        }
    };
}

/// The contiguous data of an operand.
fn view<'a, T: CudaDType>((s, l): Arg<'a>) -> Result<CudaView<'a, T>> {
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => bail!("fused CUDA kernel: the operand is not contiguous"),
    }
}

/// Rows and row length of an operand, by its last dimension.
fn rows((_, l): Arg) -> (usize, usize) {
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / n, n)
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("fused CUDA kernel: size {v} over i32")))
}

/// An uninitialized output of `len` elements, written whole by the kernel that follows (at least
/// one element: the driver refuses an allocation of none; a storage longer than its layout is
/// fine in candle).
#[allow(unsafe_code)]
fn output<T: Float>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel below writes each element of its output.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Loads entry point `$op`_T of the module and launches it with `$cfg` and the arguments given
/// (nothing when the grid is empty).
macro_rules! launch {
    ($t:ty, $dev:expr, $op:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let cfg: LaunchConfig = $cfg;
        if cfg.grid_dim.0 > 0 {
            let func = $dev.get_or_load_custom_func(&format!("{}_{}", $op, <$t as Float>::SUFFIX), MODULE, PTX)?;
            let mut builder = func.builder();
            $(builder.arg($arg);)*
            // SAFETY: the arguments match the kernel's parameters in `kernels/fused.cu` (each
            // call below quotes its signature): buffers of the sizes the launch covers, then the
            // scalars, in order and of the same widths.
            #[allow(unsafe_code)]
            let launched = unsafe { builder.launch(cfg) };
            launched.w()?;
        }
    }};
}

/// One block per row of `n`: a warp-multiple of threads up to 1,024.
fn per_row(rows: usize, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("{rows} rows")))?,
            1,
            1,
        ),
        block_dim: (n.next_multiple_of(32).clamp(32, 1024) as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A grid-stride loop over `len` elements.
fn per_element(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(256).clamp(0, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn wrap<T: Float>(out: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

fn softmax<T: Float>(x: Arg, bias: Option<Arg>, scale: f32) -> Result<CudaStorage> {
    let dev = x.0.device();
    let (rows_, n) = rows(x);
    let dims = x.1.dims();
    let (heads, t) = if dims.len() == 4 { (dims[1], dims[2]) } else { (1, 1) };
    let (xv, bv) = (view::<T>(x)?, bias.map(view::<T>).transpose()?);
    let (bb, bh, bt) = match bias {
        Some((_, bl)) if bl.dims().len() == 4 => (bl.dims()[0], bl.dims()[1], bl.dims()[2]),
        _ => (1, 1, 1),
    };
    let y = output::<T>(dev, rows_ * n)?;
    let [n_, heads, t, bb, bh, bt] = [int(n)?, int(heads)?, int(t)?, int(bb)?, int(bh)?, int(bt)?];
    // softmax_T(const T *x, const T *bias, T *y, int n, float scale, int heads, int t, int bb,
    //           int bh, int bt), the bias a null pointer when there is none
    let cfg = per_row(rows_, n)?;
    match &bv {
        Some(bv) => launch!(
            T,
            dev,
            "softmax",
            cfg,
            [&xv, bv, &y, &n_, &scale, &heads, &t, &bb, &bh, &bt]
        ),
        None => launch!(
            T,
            dev,
            "softmax",
            cfg,
            [&xv, &0u64, &y, &n_, &scale, &heads, &t, &bb, &bh, &bt]
        ),
    }
    Ok(wrap(y, dev))
}

fn softmax_grad<T: Float>(g: Arg, y: Arg, scale: f32) -> Result<CudaStorage> {
    let dev = g.0.device();
    let (rows_, n) = rows(g);
    let (gv, yv) = (view::<T>(g)?, view::<T>(y)?);
    let dx = output::<T>(dev, rows_ * n)?;
    let n_ = int(n)?;
    // softmax_grad_T(const T *g, const T *y, T *dx, int n, float scale)
    launch!(T, dev, "softmax_grad", per_row(rows_, n)?, [&gv, &yv, &dx, &n_, &scale]);
    Ok(wrap(dx, dev))
}

fn rms_norm<T: Float>(x: Arg, w: Arg, eps: f32) -> Result<CudaStorage> {
    let dev = x.0.device();
    let (rows_, n) = rows(x);
    let (xv, wv) = (view::<T>(x)?, view::<T>(w)?);
    let y = output::<T>(dev, rows_ * n)?;
    let n_ = int(n)?;
    // rms_norm_T(const T *x, const T *w, T *y, int n, float eps)
    launch!(T, dev, "rms_norm", per_row(rows_, n)?, [&xv, &wv, &y, &n_, &eps]);
    Ok(wrap(y, dev))
}

fn rms_norm_grad<T: Float>(g: Arg, x: Arg, w: Arg, eps: f32) -> Result<CudaStorage> {
    let dev = g.0.device();
    let (rows_, n) = rows(g);
    let (gv, xv, wv) = (view::<T>(g)?, view::<T>(x)?, view::<T>(w)?);
    let dx = output::<T>(dev, rows_ * n)?;
    let n_ = int(n)?;
    // rms_norm_grad_T(const T *g, const T *x, const T *w, T *dx, int n, float eps)
    launch!(
        T,
        dev,
        "rms_norm_grad",
        per_row(rows_, n)?,
        [&gv, &xv, &wv, &dx, &n_, &eps]
    );
    Ok(wrap(dx, dev))
}

fn rope<T: Float>(x: Arg, cos: Arg, sin: Arg, transposed: bool) -> Result<CudaStorage> {
    let dev = x.0.device();
    let &[_, heads, t, d] = x.1.dims() else {
        bail!("rope on CUDA: x of {:?}", x.1.dims());
    };
    let len = x.1.shape().elem_count();
    let (xv, cv, sv) = (view::<T>(x)?, view::<T>(cos)?, view::<T>(sin)?);
    let y = output::<T>(dev, len)?;
    let pairs = (len / 2) as i64;
    let table_batch = cos.1.dims().first().copied().unwrap_or(1);
    let [heads, t, d, table_batch] = [int(heads)?, int(t)?, int(d)?, int(table_batch)?];
    let transposed = i32::from(transposed);
    // rope_T(const T *x, const T *cos, const T *sin, T *y, long pairs, int heads, int t, int d,
    //        int table_batch, int transposed)
    launch!(
        T,
        dev,
        "rope",
        per_element(len / 2),
        [&xv, &cv, &sv, &y, &pairs, &heads, &t, &d, &table_batch, &transposed]
    );
    Ok(wrap(y, dev))
}

fn swiglu<T: Float>(a: Arg, b_: Arg) -> Result<CudaStorage> {
    let dev = a.0.device();
    let len = a.1.shape().elem_count();
    let (av, bv) = (view::<T>(a)?, view::<T>(b_)?);
    let y = output::<T>(dev, len)?;
    let len_ = len as i64;
    // swiglu_T(const T *a, const T *b, T *y, long len)
    launch!(T, dev, "swiglu", per_element(len), [&av, &bv, &y, &len_]);
    Ok(wrap(y, dev))
}

fn swiglu_grad<T: Float>(g: Arg, a: Arg, b_: Arg) -> Result<CudaStorage> {
    let dev = g.0.device();
    let len = g.1.shape().elem_count();
    let (gv, av, bv) = (view::<T>(g)?, view::<T>(a)?, view::<T>(b_)?);
    let out = output::<T>(dev, 2 * len)?;
    let len_ = len as i64;
    // swiglu_grad_T(const T *g, const T *a, const T *b, T *out, long len): out is [da; db]
    launch!(T, dev, "swiglu_grad", per_element(len), [&gv, &av, &bv, &out, &len_]);
    Ok(wrap(out, dev))
}

fn relu_grad<T: Float>(g: Arg, h: Arg, keep: f32) -> Result<CudaStorage> {
    let dev = g.0.device();
    let len = g.1.shape().elem_count();
    let (gv, hv) = (view::<T>(g)?, view::<T>(h)?);
    let out = output::<T>(dev, len)?;
    let len_ = len as i64;
    // relu_grad_T(const T *g, const T *h, T *out, long len, float keep)
    launch!(T, dev, "relu_grad", per_element(len), [&gv, &hv, &out, &len_, &keep]);
    Ok(wrap(out, dev))
}

fn dropout_mask<T: Float>(like: Arg, len: usize, state: u64, p: f32) -> Result<CudaStorage> {
    let dev = like.0.device();
    let out = output::<T>(dev, len)?;
    // As the CPU computes it (`fused::dropout_multipliers`), in f32.
    let scale = 1.0 / (1.0 - p);
    let len_ = len as i64;
    // dropout_mask_T(T *out, unsigned long long state, float p, float scale, long n)
    launch!(
        T,
        dev,
        "dropout_mask",
        per_element(len),
        [&out, &state, &p, &scale, &len_]
    );
    Ok(wrap(out, dev))
}

/// The cross-entropy kernels take f32 logits (what `ops::nll` gives them) and u32 targets.
fn nll_operands<'a>(x: Arg<'a>, t: Arg<'a>) -> Result<(CudaView<'a, f32>, CudaView<'a, u32>)> {
    if x.0.dtype() != DType::F32 || t.0.dtype() != DType::U32 {
        bail!(
            "nll on CUDA: logits {:?} and targets {:?} (f32 and u32 expected)",
            x.0.dtype(),
            t.0.dtype()
        );
    }
    Ok((view::<f32>(x)?, view::<u32>(t)?))
}

impl CudaKernels for Fused {
    fn softmax(&self, x: Arg, bias: Option<Arg>, scale: f32) -> Result<CudaStorage> {
        by_dtype!("softmax", x.0, softmax(x, bias, scale))
    }

    fn softmax_grad(&self, g: Arg, y: Arg, scale: f32) -> Result<CudaStorage> {
        by_dtype!("softmax gradient", g.0, softmax_grad(g, y, scale))
    }

    fn rms_norm(&self, x: Arg, w: Arg, eps: f32) -> Result<CudaStorage> {
        by_dtype!("rms norm", x.0, rms_norm(x, w, eps))
    }

    fn rms_norm_grad(&self, g: Arg, x: Arg, w: Arg, eps: f32) -> Result<CudaStorage> {
        by_dtype!("rms norm gradient", g.0, rms_norm_grad(g, x, w, eps))
    }

    fn rope(&self, x: Arg, cos: Arg, sin: Arg, transposed: bool) -> Result<CudaStorage> {
        by_dtype!("rope", x.0, rope(x, cos, sin, transposed))
    }

    fn swiglu(&self, a: Arg, b: Arg) -> Result<CudaStorage> {
        by_dtype!("swiglu", a.0, swiglu(a, b))
    }

    fn swiglu_grad(&self, g: Arg, a: Arg, b: Arg) -> Result<CudaStorage> {
        by_dtype!("swiglu gradient", g.0, swiglu_grad(g, a, b))
    }

    fn relu_grad(&self, g: Arg, h: Arg, keep: f32) -> Result<CudaStorage> {
        by_dtype!("relu gradient", g.0, relu_grad(g, h, keep))
    }

    fn dropout_mask(&self, like: Arg, len: usize, state: u64, p: f32) -> Result<CudaStorage> {
        by_dtype!("dropout mask", like.0, dropout_mask(like, len, state, p))
    }

    fn nll(&self, x: Arg, t: Arg) -> Result<CudaStorage> {
        let dev = x.0.device();
        let (rows_, v) = rows(x);
        let (xv, tv) = nll_operands(x, t)?;
        let out = output::<f32>(dev, rows_)?;
        let v_ = int(v)?;
        // nll_f32(const float *x, const uint32_t *t, float *out, int v)
        launch!(f32, dev, "nll", per_row(rows_, v)?, [&xv, &tv, &out, &v_]);
        Ok(wrap(out, dev))
    }

    fn nll_grad(&self, g: Arg, x: Arg, t: Arg) -> Result<CudaStorage> {
        let dev = x.0.device();
        let (rows_, v) = rows(x);
        let (xv, tv) = nll_operands(x, t)?;
        let gv = view::<f32>(g)?;
        let dx = output::<f32>(dev, rows_ * v)?;
        let v_ = int(v)?;
        // nll_grad_f32(const float *g, const float *x, const uint32_t *t, float *dx, int v)
        launch!(f32, dev, "nll_grad", per_row(rows_, v)?, [&gv, &xv, &tv, &dx, &v_]);
        Ok(wrap(dx, dev))
    }
}
