use std::time::Instant;
fn main() {
    // The demo's shape: 12 prompts (4 tasks × 3 origins) of 100 × 576 (SmolLM2), and a bigger set.
    for (n, r, d) in [(12, 100, 576), (48, 100, 576), (24, 100, 4096)] {
        let items = ndx::sample(n, r, d);
        let t = Instant::now();
        let mut a = Vec::new();
        for _ in 0..5 { a = ndx::ours(&items); }
        let ours = t.elapsed().as_secs_f64() / 5.0;
        #[cfg(feature = "nd")]
        {
            let t = Instant::now();
            let mut b = Vec::new();
            for _ in 0..5 { b = ndx::nd(&items); }
            let nd = t.elapsed().as_secs_f64() / 5.0;
            let same = a.iter().flatten().zip(b.iter().flatten()).filter(|(x, y)| x.to_bits() == y.to_bits()).count();
            let maxd = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            println!("{n}x{r}x{d}: tpv {:.2} ms, ndarray {:.2} ms; bit-identical {same}/{}, max diff {maxd:.1e}", ours * 1e3, nd * 1e3, n * n);
        }
        #[cfg(not(feature = "nd"))]
        println!("{n}x{r}x{d}: tpv {:.2} ms", ours * 1e3);
    }
}
