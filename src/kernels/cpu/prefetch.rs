//! Software prefetch for the short-row forward (in `cpu`, the module that allows `unsafe`).
//!
//! The short-row forward works on blocks of 16 rows: the sums of every row of the block, then
//! each row's statistics (a chain of dependent f64 steps), then the block's rows are written.
//! When the rows come from memory, the loads of a block's first step wait for memory while
//! the statistics of the block before have already been computed: the processor's own
//! prefetcher does not run far enough ahead of this loop. Hinting the lines
//! [`AHEAD_BYTES`] ahead of the block being read (one `prefetcht0` per 64-byte line of the
//! block that far ahead) overlaps those loads with the work on the rows before.
//!
//! Measured (BENCHMARKS.md, 2026-12-02) on the 2-core AMD EPYC VM (Zen 3, AVX2; 32 MiB L3),
//! one thread, the f32 forward at 65536×64 (16 MiB in and out) ran 1.33× as fast with the
//! hint 32 KiB ahead (median of 20 runs 4.56 GB/s without, 6.06 with), f64 at 32768×64 1.19×,
//! f32 at 16384×256 1.07×, f32 at 262144×64 1.09×; in cache (2048×64, 16384×64) no change
//! beyond the noise. It is not used where it did not pay:
//! - rows in cache: a call whose input and output together are smaller than the last-level
//!   cache (or than [`stream::ALWAYS_STREAM_BYTES`]) gets no hint. On the 2-core Xeon VM with
//!   AVX-512 (480 MiB L3) a hint for rows that were in L3 made the forward 0.84–0.95× as fast.
//! - f16 and bf16 (`Element::PREFETCH_SHORT_ROWS`): their short-row forward converts every
//!   value and is slower than memory; with the hint it ran 0.88× (f16) and 0.95× (bf16) as
//!   fast at 131072×64.
//! - the backward: with the hint its short rows ran no faster (65536×64, 16384×64).
//!
//! A prefetch changes no value: the choice never changes a result.
//!
//! [`stream::ALWAYS_STREAM_BYTES`]: super::stream::ALWAYS_STREAM_BYTES

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
use std::sync::OnceLock;

use super::stream;

/// How far ahead of the rows being read the hints go.
pub(crate) const AHEAD_BYTES: usize = 32 << 10;

/// Whether a forward call that reads and writes `bytes` bytes in all (input and output
/// together; once in place) hints its short rows ahead: when they do not fit in the last-level
/// cache (capped at [`stream::ALWAYS_STREAM_BYTES`], as for streaming stores: a large shared
/// cache is not all this process's). `LAYERNORM_PREFETCH` (`on` or `off`) overrides it.
pub(crate) fn for_rows(bytes: usize) -> bool {
    forced().unwrap_or_else(|| bytes >= stream::last_level_cache().min(stream::ALWAYS_STREAM_BYTES))
}

/// The choice the environment variable `LAYERNORM_PREFETCH` forces on every call (`on` or
/// `off`; read once), for measuring both paths on a machine; `None` otherwise.
fn forced() -> Option<bool> {
    static FORCED: OnceLock<Option<bool>> = OnceLock::new();
    *FORCED.get_or_init(|| match super::setting("LAYERNORM_PREFETCH").as_deref() {
        Some("on") => Some(true),
        Some("off") => Some(false),
        _ => None,
    })
}

/// Hints the CPU to bring every cache line of `values` into the first-level cache. Only a
/// hint: nothing is read into the program, and nothing happens off x86-64.
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        // One hint per 64-byte line.
        const LINE_BYTES: usize = 64;
        let bytes = size_of_val(values);
        let start = values.as_ptr().cast::<i8>();
        let mut offset = 0;
        while offset < bytes {
            // SAFETY: `prefetcht0` needs SSE, which every x86-64 CPU has (it is part of the
            // target's baseline). The address is inside `values` (`offset < bytes`), so
            // `add` stays within one allocation; a prefetch reads nothing into the program,
            // writes nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            offset += LINE_BYTES;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_takes_any_slice() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        for (start, end) in [(0, 0), (0, 1), (3, 17), (1, 1000), (999, 1000)] {
            prefetch(&values[start..end]);
        }
        prefetch::<u8>(&[]);
        assert_eq!(values[999], 999.0);
    }

    #[test]
    fn calls_larger_than_the_cache_take_the_hint() {
        if forced().is_some() {
            return;
        }
        assert!(!for_rows(4096));
        assert!(for_rows(stream::ALWAYS_STREAM_BYTES));
        assert!(for_rows(usize::MAX));
    }
}
