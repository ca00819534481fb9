//! How the kernels store their outputs: ordinary stores, or streaming (non-temporal) stores
//! for outputs larger than the last-level cache (in `cpu`, the module that allows `unsafe`).
//!
//! An ordinary store to a line that is not in cache first reads the line from memory (a
//! "read for ownership"), so writing `y` costs its bytes twice: forward moves 12 bytes per f32
//! element instead of 8, backward 16 instead of 12. A streaming store writes whole lines
//! straight to memory without reading them, which is what `memcpy` does for large copies. It
//! also leaves the output out of the cache, which is right only when the output does not fit
//! there anyway: in-cache outputs keep ordinary stores (the next layer reads them from cache).
//!
//! Measured (BENCHMARKS.md) on a 16-core Xeon, streaming stores made forward and backward
//! 1.1–1.5× faster at 128 and 512 MiB outputs; on a 2-core AMD EPYC VM the forward gained at
//! DRAM sizes and the backward only from 128 MiB on: the forward streams `y` by size and cache,
//! the backward streams `dx` from 64 MiB on ([`Stores::for_backward_output`]), writing each
//! row of `dx` in cache and streaming the finished row out whole ([`copy_row`]).
//!
//! Streaming stores here are `vmovntdq` on 16-byte pieces (x86-64 with AVX, which every CPU
//! the SIMD kernels use has); elsewhere [`Stores::streaming`] gives ordinary stores. 16-byte
//! pieces need only 16-byte alignment, which large allocations have (32- or 64-byte alignment
//! usually not). Values are stored unchanged either way: the choice never changes a result.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, _mm_sfence};
use std::sync::OnceLock;

/// How a job's outputs (`y`, and `dx` where forced) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stores {
    /// Ordinary stores: the output stays in cache for whoever reads it next.
    Cached,
    /// Streaming stores for every 16-byte-aligned full vector, then a store fence (x86-64
    /// only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Streaming(HasAvx),
}

/// Proof that the CPU has AVX (for `vmovntdq`): the private field lets only
/// [`Stores::streaming`], which checks, make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HasAvx(());

/// The last-level cache assumed where its size cannot be read (a typical server L3).
const DEFAULT_LAST_LEVEL_CACHE: usize = 32 << 20;

/// Outputs at least this large stream whatever the reported cache size: a large shared L3
/// (300 MiB on a 16-core Xeon tried) is not the share one process gets; there a 128 MiB
/// forward output gained 24 % (1 thread) and 63 % (16 threads) from streaming stores.
pub(super) const ALWAYS_STREAM_BYTES: usize = 64 << 20;

impl Stores {
    /// Streaming stores where the CPU has them (x86-64 with AVX); ordinary stores elsewhere.
    pub(crate) fn streaming() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return Stores::Streaming(HasAvx(()));
        }
        Stores::Cached
    }

    /// The stores for the forward's `y` of `bytes` bytes: streaming where the CPU has them and
    /// the output is at least the last-level cache or [`ALWAYS_STREAM_BYTES`], ordinary stores
    /// otherwise. `LAYERNORM_STORES` overrides it. (Until 2026-11-29 the bound was half the
    /// cache. On the 2-core AMD EPYC VM (32 MiB L3), 16 MiB outputs then streamed, and
    /// streaming against ordinary stores measured 0.74–0.76× at 65536×64 and 0.92–1.08× at
    /// 4096×1024, one and two threads, in alternating runs; 1.02–1.05× at 32 MiB.)
    pub(crate) fn for_output(bytes: usize) -> Self {
        Self::streaming_from(bytes, last_level_cache().min(ALWAYS_STREAM_BYTES))
    }

    /// The stores for backward's `dx` of `bytes` bytes: streaming from [`ALWAYS_STREAM_BYTES`]
    /// on (where the CPU has them), ordinary stores below, whatever the cache size;
    /// `LAYERNORM_STORES` overrides it. The backward streams each finished row of `dx` from a
    /// row in cache ([`copy_row`]). Measured on 2026-11-29 (BENCHMARKS.md), streaming against
    /// ordinary stores: on the 16-core Xeon 1.31× and 1.37× on one thread and 1.20× and 1.14×
    /// on 16 at 128 and 512 MiB outputs, 0.97× (one thread) at 16 MiB; on the 2-core AMD EPYC VM
    /// 0.95–1.11× at 128 MiB but 0.69–0.94× at 16 and 32 MiB. (An earlier form that streamed
    /// each vector as the loop made it was up to 6× slower on that VM.)
    pub(crate) fn for_backward_output(bytes: usize) -> Self {
        Self::streaming_from(bytes, ALWAYS_STREAM_BYTES)
    }

    /// Ordinary stores whatever the output's size, unless `LAYERNORM_STORES` forces a choice:
    /// for element types whose kernels do not gain from streaming stores
    /// (`Element::STREAMING_STORES`: f16 and bf16, whose loops convert every value and are
    /// slower than memory on one thread; on the 2-core AMD EPYC VM at 64 MiB outputs, 1 and 2
    /// threads, their forward and backward ran 1.2–1.3× as fast with ordinary stores).
    pub(crate) fn cached_unless_forced() -> Self {
        forced().unwrap_or(Stores::Cached)
    }

    /// Streaming stores (where the CPU has them) for an output of at least `bound` bytes,
    /// ordinary stores for a smaller one, unless `LAYERNORM_STORES` forces a choice.
    fn streaming_from(bytes: usize, bound: usize) -> Self {
        forced().unwrap_or_else(|| {
            if bytes >= bound {
                Stores::streaming()
            } else {
                Stores::Cached
            }
        })
    }

    /// Makes streaming stores visible to other threads before the job returns (a store
    /// fence); nothing for ordinary stores.
    #[inline]
    pub(crate) fn finish(self) {
        #[cfg(target_arch = "x86_64")]
        if let Stores::Streaming(_) = self {
            // Streaming stores are weakly ordered: without the fence, a thread that sees the
            // job finished (rayon's join) might not yet see all of its output.
            // SAFETY: `sfence` needs SSE, which every x86-64 CPU has (it is part of the
            // target's baseline); it has no operands and no other precondition.
            unsafe { _mm_sfence() };
        }
    }
}

/// The choice the environment variable `LAYERNORM_STORES` forces on every call (`cached` or
/// `streaming`; read once), for measuring both paths on a machine; `None` otherwise.
fn forced() -> Option<Stores> {
    static FORCED: OnceLock<Option<Stores>> = OnceLock::new();
    *FORCED.get_or_init(|| match super::setting("LAYERNORM_STORES").as_deref() {
        Some("cached") => Some(Stores::Cached),
        Some("streaming") => Some(Stores::streaming()),
        _ => None,
    })
}

/// A row's full output vectors (or eight-value half pieces) and the job's [`Stores`]: streaming
/// stores where the stores say so, the vector is 16-byte aligned and a whole number of 16-byte
/// pieces; ordinary stores otherwise. Values are stored unchanged either way: `get(k)` is the
/// vector last `put` there (once [`Stores::finish`] has run, for other threads).
///
/// Where the alignment is checked is the type's choice, for speed: `ROW_CHECKED = false`
/// checks each vector's address as it is stored (for f32 and f64 the compiler lifts the
/// test on the job's stores out of the loops, so the loops for ordinary stores test nothing);
/// `ROW_CHECKED = true` checks the row's start once (every piece of an aligned row is
/// aligned), for the half loops: the compiler did not lift their per-piece address check,
/// about six of the f16 forward's thirty instructions per vector (2-core AMD EPYC VM). What is
/// left per piece is the test of the job's stores; the half forward also has a copy of its
/// loops for ordinary stores only, which tests nothing (`Storage::CACHED_LOOP_COPY`).
/// The backward loops always store ordinarily (into `dx`, or into a row in cache that is then
/// streamed out by [`copy_row`]), so they test nothing.
// Elsewhere than x86-64 there are no streaming stores: the code that reads `stores` and
// `aligned` (in `put`) is x86-64 only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct OutVectors<'a, V, const ROW_CHECKED: bool = false> {
    vectors: &'a mut [V],
    /// The job's stores (the same for every row).
    stores: Stores,
    /// With `ROW_CHECKED`: whether `vectors` starts 16-byte aligned and `V` is a whole number
    /// of 16-byte pieces, so that every vector is aligned (unused otherwise).
    aligned: bool,
}

impl<'a, V: bytemuck::Pod, const ROW_CHECKED: bool> OutVectors<'a, V, ROW_CHECKED> {
    /// `vectors`, stored as `stores` says.
    #[inline(always)]
    pub(crate) fn new(stores: Stores, vectors: &'a mut [V]) -> Self {
        let aligned = ROW_CHECKED
            && size_of::<V>().is_multiple_of(16)
            && (vectors.as_ptr() as usize).is_multiple_of(16);
        OutVectors {
            vectors,
            stores,
            aligned,
        }
    }

    /// No vectors (the half rows' placeholder where a row has none).
    #[cfg(feature = "half")]
    #[inline(always)]
    pub(crate) fn empty() -> Self {
        OutVectors {
            vectors: &mut [],
            stores: Stores::Cached,
            aligned: false,
        }
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.vectors.len()
    }

    /// The first `len` vectors (the same start, so the same alignment).
    #[inline(always)]
    pub(crate) fn first(self, len: usize) -> Self {
        OutVectors {
            vectors: &mut self.vectors[..len],
            ..self
        }
    }

    /// Vector `k`; `None` past the end.
    #[inline(always)]
    pub(crate) fn get(&self, k: usize) -> Option<V> {
        self.vectors.get(k).copied()
    }

    /// Stores `vector` as vector `k`.
    ///
    /// # Panics
    /// If `k` is past the end.
    #[inline(always)]
    pub(crate) fn put(&mut self, k: usize, vector: V) {
        let target = &mut self.vectors[k];
        #[cfg(target_arch = "x86_64")]
        if let Stores::Streaming(HasAvx(())) = self.stores {
            let aligned = if ROW_CHECKED {
                // Checked in `new` for the row's start; the vectors follow it whole.
                self.aligned
            } else {
                size_of::<V>().is_multiple_of(16) && (target as *mut V as usize).is_multiple_of(16)
            };
            if aligned {
                stream_pieces(target, vector);
                return;
            }
        }
        *target = vector;
    }
}

/// Copies `source` into `target` (of the same length): with streaming stores for its 16-byte
/// aligned middle where `stores` say so, one 16-byte piece after the other (whole cache lines
/// in order, which the CPU's write-combining buffers handle best), ordinary copies otherwise.
/// The backward pass writes each row of `dx` into a row in cache and streams it out with this
/// (see `simd::backward`).
pub(crate) fn copy_row<E: bytemuck::Pod>(stores: Stores, target: &mut [E], source: &[E]) {
    assert_eq!(target.len(), source.len(), "copy_row: lengths differ");
    if stores == Stores::Cached {
        target.copy_from_slice(source);
        return;
    }
    let source: &[u8] = bytemuck::cast_slice(source);
    let target: &mut [u8] = bytemuck::cast_slice_mut(target);
    let (head, middle, tail) = bytemuck::pod_align_to_mut::<u8, [u8; 16]>(target);
    let (source_head, rest) = source.split_at(head.len());
    let (source_middle, source_tail) = rest.split_at(middle.len() * 16);
    head.copy_from_slice(source_head);
    tail.copy_from_slice(source_tail);
    let mut pieces = OutVectors::<[u8; 16], true>::new(stores, middle);
    let (source_pieces, _) = source_middle.as_chunks::<16>();
    for (k, &piece) in source_pieces.iter().enumerate() {
        pieces.put(k, piece);
    }
}

/// Writes `vector` into `target` by streaming stores, 16 bytes at a time: only where the CPU
/// has AVX (`Stores::Streaming` holds the proof), `target` is 16-byte aligned and `V` is a
/// whole number of 16-byte pieces, which [`OutVectors::put`] makes sure of before it calls
/// this.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stream_pieces<V: bytemuck::Pod>(target: &mut V, vector: V) {
    let bytes = bytemuck::bytes_of(&vector);
    let base = (target as *mut V).cast::<__m128i>();
    for index in 0..size_of::<V>() / 16 {
        let value: __m128i = bytemuck::pod_read_unaligned(&bytes[index * 16..index * 16 + 16]);
        // SAFETY: `target` is a valid, exclusively borrowed `V` of `size_of::<V>()` bytes, a
        // multiple of 16, so `base + index` (`index < size_of::<V>() / 16`) points to 16
        // writable bytes inside it, 16-byte aligned as `vmovntdq` requires (the caller checked
        // `target`, or the start of the row it is a whole vector of). The CPU has AVX, which
        // the VEX encoding needs (the caller holds a `HasAvx`, which only `Stores::streaming`
        // makes, after checking). Any bit pattern is a valid `V` (`Pod`), and nothing reads
        // `*target` before the last piece is written. The asm writes those 16 bytes only, and
        // touches no stack or flags. (The VEX encoding, not SSE's `movntdq` of
        // `_mm_stream_si128`: mixing legacy SSE into AVX code costs a penalty on Intel CPUs.)
        unsafe {
            std::arch::asm!(
                "vmovntdq xmmword ptr [{address}], {value}",
                address = in(reg) base.add(index),
                value = in(xmm_reg) value,
                options(nostack, preserves_flags),
            )
        }
    }
}

/// Size of the largest CPU cache in bytes (Linux's sysfs; [`DEFAULT_LAST_LEVEL_CACHE`]
/// where it cannot be read), read once.
pub(super) fn last_level_cache() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| read_cache_sizes().unwrap_or(DEFAULT_LAST_LEVEL_CACHE))
}

/// The largest of cpu0's caches listed under sysfs, if any.
fn read_cache_sizes() -> Option<usize> {
    let entries = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    entries
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.ok()?.path().join("size")).ok()?;
            parse_cache_size(&text)
        })
        .max()
}

/// `"32768K"`, `"1M"` or `"512"` (bytes) as bytes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let scale = match unit.trim() {
        "" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size(""), None);
        assert!(last_level_cache() > 0);
    }

    /// Rows of 16- and 32-byte vectors at every 4-byte offset, with the alignment checked per
    /// vector or per row: aligned ones stream, the others take ordinary stores; the values
    /// land either way.
    fn write_at_every_alignment<const ROW_CHECKED: bool>() {
        let mut buffer = vec![[0.0f32; 4]; 40];
        let floats: &mut [f32] = bytemuck::cast_slice_mut(&mut buffer);
        for offset in 0..4 {
            for stores in [Stores::Cached, Stores::streaming()] {
                let window = &mut floats[offset..offset + 128];
                let (chunks, _) = window.as_chunks_mut::<8>();
                let mut row = OutVectors::<_, ROW_CHECKED>::new(stores, chunks);
                assert_eq!(
                    row.aligned,
                    ROW_CHECKED && (row.vectors.as_ptr() as usize).is_multiple_of(16)
                );
                for k in 0..row.len() {
                    let value: [f32; 8] = std::array::from_fn(|i| (k * 8 + i + offset) as f32);
                    row.put(k, value);
                }
                let (chunks, _) = window.as_chunks_mut::<4>();
                let mut row =
                    OutVectors::<_, ROW_CHECKED>::new(stores, &mut chunks[16..]).first(16);
                for k in 0..16 {
                    let value = row.get(k).unwrap().map(|v| -v);
                    row.put(k, value);
                }
                assert_eq!(row.get(16), None);
                stores.finish();
                for (i, &value) in window.iter().enumerate() {
                    let expected = (i + offset) as f32;
                    let expected = if i >= 64 { -expected } else { expected };
                    assert_eq!(value, expected, "offset {offset}, {stores:?}, element {i}");
                }
            }
        }
    }

    #[test]
    fn both_stores_write_the_value_at_any_alignment() {
        write_at_every_alignment::<false>();
        write_at_every_alignment::<true>();
    }

    #[test]
    fn rows_copy_whole_at_any_alignment() {
        let source: Vec<u16> = (0..200).collect();
        for stores in [Stores::Cached, Stores::streaming()] {
            for offset in 0..9 {
                for len in [0, 1, 7, 8, 9, 63, 64, 65, 190] {
                    let mut target = vec![0u16; 200];
                    copy_row(stores, &mut target[offset..offset + len], &source[..len]);
                    stores.finish();
                    assert_eq!(&target[offset..offset + len], &source[..len]);
                    assert!(target[..offset].iter().all(|&v| v == 0));
                    assert!(target[offset + len..].iter().all(|&v| v == 0));
                }
            }
        }
    }

    #[test]
    fn the_choice_follows_the_output_size() {
        if std::env::var_os("LAYERNORM_STORES").is_some() {
            return;
        }
        assert_eq!(Stores::for_output(4096), Stores::Cached);
        assert_eq!(Stores::for_output(usize::MAX / 2), Stores::streaming());
        assert_eq!(Stores::for_output(64 << 20), Stores::streaming());
        // Backward: ordinary stores below 64 MiB whatever the cache, streaming from there.
        assert_eq!(Stores::for_backward_output(16 << 20), Stores::Cached);
        assert_eq!(Stores::for_backward_output((64 << 20) - 1), Stores::Cached);
        assert_eq!(Stores::for_backward_output(64 << 20), Stores::streaming());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Stores::streaming() != Stores::Cached,
            std::arch::is_x86_feature_detected!("avx")
        );
    }
}
