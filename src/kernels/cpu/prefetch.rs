//! Software prefetch for the short-row forward (in `cpu`, the module that allows `unsafe`).
//!
//! The short-row forward works on blocks of 16 rows: the sums of every row of the block, then
//! each row's statistics (a chain of dependent f64 steps), then the block's rows are written.
//! When the rows come from memory, the loads of a block's first step may wait for memory while
//! the statistics of the block before have already been computed, where the processor's own
//! prefetcher does not run far enough ahead of this loop. Hinting the lines
//! [`AHEAD_BYTES`] ahead of the block being read (one `prefetcht0` per 64-byte line of the
//! block that far ahead) overlaps those loads with the work on the rows before.
//!
//! Whether it pays depends on the CPU, so it is off unless asked for (`LAYERNORM_PREFETCH`, see
//! [`for_rows`]). Measured (BENCHMARKS.md), one thread, the f32 forward at 65536×64 (16 MiB
//! in and out), hint 32 KiB ahead against none, medians of alternating rounds:
//! - 2-core AMD EPYC VM, Zen 3 (AVX2; 32 KiB L1d and 512 KiB L2 per core, 32 MiB L3),
//!   2026-12-02: 1.33× as fast (4.56 GB/s without, 6.06 with; 20 runs); f64 at 32768×64
//!   1.19×, f32 at 16384×256 1.07×, f32 at 262144×64 1.09×.
//! - 2-core AMD EPYC VM, Zen 4 (AVX-512; 32 KiB L1d and 1 MiB L2 per core, 32 MiB L3),
//!   2026-12-03: 0.73× as fast (10 rounds; f64 at 32768×64 0.70×, f32 at 262144×64 0.72×),
//!   and every other distance (4–16 KiB) and level (`prefetcht1`, `prefetchnta`) tried was
//!   slower than no hint too (0.69–0.94×, 8 rounds).
//! - 2-core Xeon VM with AVX-512 (480 MiB L3), 2026-12-01: rows in its L3 ran 0.84–0.95× as
//!   fast with hints.
//!
//! With two of three CPUs slower, the default is no hint; on a CPU like the Zen 3 one,
//! `LAYERNORM_PREFETCH=large` turns on the rule measured there. Under any setting f16 and
//! bf16 (`Element::PREFETCH_SHORT_ROWS`; 0.88× and 0.95× on Zen 3 at 131072×64: their short
//! rows convert every value and are slower than memory) and the backward (no faster on Zen 3)
//! get no hints.
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

/// Which calls get hints, as `LAYERNORM_PREFETCH` says (read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// None (unset, `off`, or any other value): the default.
    Off,
    /// `large`: calls that do not fit in the last-level cache (the rule measured on Zen 3).
    Large,
    /// `on`: every call, whatever its size (to test that hints change no value).
    Always,
}

/// Whether a forward call that reads and writes `bytes` bytes in all (input and output
/// together; once in place) hints its short rows ahead: never by default; with
/// `LAYERNORM_PREFETCH=large` when they do not fit in the last-level cache (capped at
/// [`stream::ALWAYS_STREAM_BYTES`], as for streaming stores: a large shared cache is not all
/// this process's); with `LAYERNORM_PREFETCH=on` always.
pub(crate) fn for_rows(bytes: usize) -> bool {
    hints(choice(), bytes)
}

/// [`for_rows`] under `choice`.
fn hints(choice: Choice, bytes: usize) -> bool {
    match choice {
        Choice::Off => false,
        Choice::Large => bytes >= stream::last_level_cache().min(stream::ALWAYS_STREAM_BYTES),
        Choice::Always => true,
    }
}

/// The environment's [`Choice`].
fn choice() -> Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    *CHOICE.get_or_init(|| match super::setting("LAYERNORM_PREFETCH").as_deref() {
        Some("on") => Choice::Always,
        Some("large") => Choice::Large,
        _ => Choice::Off,
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
    fn hints_are_off_unless_asked_for() {
        for bytes in [0, 4096, stream::ALWAYS_STREAM_BYTES, usize::MAX] {
            assert!(!hints(Choice::Off, bytes));
            assert!(hints(Choice::Always, bytes));
        }
        assert!(!hints(Choice::Large, 4096));
        assert!(hints(Choice::Large, stream::ALWAYS_STREAM_BYTES));
        assert!(hints(Choice::Large, usize::MAX));
        if std::env::var_os("LAYERNORM_PREFETCH").is_none() {
            assert_eq!(choice(), Choice::Off);
            assert!(!for_rows(usize::MAX));
        }
    }
}
