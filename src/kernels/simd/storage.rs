//! How the SIMD kernels read and write a row's values: f32 and f64 as they are, f16 and bf16
//! converted to f32 in registers as they are loaded and rounded back as they are stored (see
//! `kernels::half`). The kernels compute in [`Storage::Wide`] whatever the storage, so a half
//! row gives exactly what the f32 kernels give on the row widened to f32, rounded to half once.

use super::SimdFloat;
use crate::element::Element;
use crate::kernels::stream::{OutVectors, Stores};
use crate::kernels::{scalar, BackwardJob, BackwardOut, BackwardRows, ForwardRows, GradSums};
use crate::kernels::{Layer, RowStatsOut};
use bytemuck::Pod;
use pulp::Simd;

/// A vector of the compute type on instruction set `S`.
pub(crate) type WideVector<E, S> = <<E as Storage>::Wide as SimdFloat>::Vector<S>;

/// An element type as the SIMD kernels store it.
pub(crate) trait Storage: Element + Pod {
    /// The type the kernels compute in (`f32` for half precision).
    type Wide: SimdFloat;
    /// A row's full vectors, read-only (each one vector of `Wide` once loaded).
    type Vectors<'a, S: Simd>: Copy
    where
        Self: 'a;
    /// A row's full vectors, written (and read, in place).
    type VectorsMut<'a, S: Simd>
    where
        Self: 'a;
    /// Whether the forward compiles its row loops twice: a common copy for ordinary stores
    /// only (which then tests no store choice per vector, and rounds by
    /// [`Storage::store_plain_nans`] where the layer's parameters hold no NaN; see the
    /// forward's `common_loop`) and a copy for any layer, with the job's stores. For f32 and f64
    /// the compiler lifts that test out of the single loop by itself, and a second copy made
    /// the f32 forward slower (512×1024: 4.8 % more instructions, 0.90× on the 2-core AMD EPYC
    /// VM); for f16 it did not (1.7× as fast with the copy).
    const CACHED_LOOP_COPY: bool;
    /// Whether [`Storage::store_plain_nans`] is shorter than [`Storage::store`] (bf16 on AVX2):
    /// the backward then compiles its row loops a second time to use it.
    const PLAIN_NAN_STORES: bool;
    /// Whether this CPU has what the type's x86-64 SIMD kernels (AVX2 and AVX-512) need beyond
    /// the instruction set itself (f16: F16C; every AVX2 CPU known has it). Where it does not,
    /// the type's kernels run without SIMD.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn runs_on_avx2() -> bool;

    /// The layer in the compute type: ε widened to f64 (exact).
    fn wide_layer(layer: Layer<'_, Self>) -> Layer<'_, Self::Wide>;
    /// A statistic as f64 (exact).
    fn stat_to_f64(value: Self::Stat) -> f64;
    /// An f64 statistic rounded to the statistics type.
    fn stat_from_f64(value: f64) -> Self::Stat;
    /// One value in the compute type (exact).
    fn widen(value: Self) -> Self::Wide;

    /// `values` as full vectors and the values after them (fewer than a vector).
    fn split<S: Simd>(values: &[Self]) -> (Self::Vectors<'_, S>, &[Self]);
    /// The same for an output row, whose full vectors are then stored as `stores` say (see
    /// [`OutVectors`]: half rows check their alignment here, once; f32 and f64 per vector).
    fn split_mut<S: Simd>(
        values: &mut [Self],
        stores: Stores,
    ) -> (Self::VectorsMut<'_, S>, &mut [Self]);
    /// The number of full vectors.
    fn count<S: Simd>(vectors: &Self::Vectors<'_, S>) -> usize;
    fn count_mut<S: Simd>(vectors: &Self::VectorsMut<'_, S>) -> usize;
    /// The first `len` vectors (so that loops over `0..len` index without checks).
    fn first<'a, S: Simd>(vectors: Self::Vectors<'a, S>, len: usize) -> Self::Vectors<'a, S>;
    fn first_mut<'a, S: Simd>(
        vectors: Self::VectorsMut<'a, S>,
        len: usize,
    ) -> Self::VectorsMut<'a, S>;
    /// Vector `k`, in the compute type.
    fn load<S: Simd>(simd: S, vectors: &Self::Vectors<'_, S>, k: usize) -> WideVector<Self, S>;
    fn load_mut<S: Simd>(
        simd: S,
        vectors: &Self::VectorsMut<'_, S>,
        k: usize,
    ) -> WideVector<Self, S>;
    /// [`Storage::load`] for the forward pass's reads of `x`, where a NaN loaded never reaches
    /// an output: it makes the row's sums NaN, and the row goes to the scalar specification,
    /// which reads the row again. So a signaling NaN need not come out quiet. For bf16 on
    /// aarch64 that is one instruction fewer per vector (the `fmax` of its widening); every
    /// other type loads as [`Storage::load`] does. Not for the backward pass: its fast rows are
    /// those whose saved statistics are finite, and their `x` or `dy` may still hold NaNs.
    #[inline(always)]
    fn load_unquieted<S: Simd>(
        simd: S,
        vectors: &Self::Vectors<'_, S>,
        k: usize,
    ) -> WideVector<Self, S> {
        Self::load(simd, vectors, k)
    }
    /// [`Storage::load_unquieted`] in place.
    #[inline(always)]
    fn load_mut_unquieted<S: Simd>(
        simd: S,
        vectors: &Self::VectorsMut<'_, S>,
        k: usize,
    ) -> WideVector<Self, S> {
        Self::load_mut(simd, vectors, k)
    }
    /// Stores `vector` (rounded to the storage type) as vector `k`.
    fn store<S: Simd>(
        simd: S,
        vectors: &mut Self::VectorsMut<'_, S>,
        k: usize,
        vector: WideVector<Self, S>,
    );
    /// [`Storage::store`] for a vector whose NaN lanes, if any, are quiet and have their lower
    /// 16 bits clear: true of every NaN that x86 arithmetic makes from operands that are not
    /// NaN (the default NaN, `0xFFC0_0000`) or carries from a half value widened, but not of
    /// one carried from an f32 NaN operand with other payload bits. For bf16 on AVX2 this
    /// rounds without testing for NaN (three instructions fewer per vector); the same bits
    /// for such vectors. Every other type stores as [`Storage::store`] does.
    #[inline(always)]
    fn store_plain_nans<S: Simd>(
        simd: S,
        vectors: &mut Self::VectorsMut<'_, S>,
        k: usize,
        vector: WideVector<Self, S>,
    ) {
        Self::store(simd, vectors, k, vector);
    }
    /// Loads `values` (shorter than a vector) into the first lanes, zeros elsewhere.
    fn load_partial<S: Simd>(simd: S, values: &[Self]) -> WideVector<Self, S>;
    /// Stores the first `values.len()` lanes, rounded to the storage type.
    fn store_partial<S: Simd>(simd: S, values: &mut [Self], vector: WideVector<Self, S>);

    /// Rows the fast path cannot do exactly, by the scalar specification run as the f32
    /// kernels would run it on the rows widened to the compute type.
    fn forward_fallback(
        layer: Layer<'_, Self::Wide>,
        x: Option<&[Self]>,
        out: &mut [Self],
        stats: Option<RowStatsOut<'_, Self::Stat>>,
    );
    /// One row's backward pass by the scalar specification (in the compute type's terms):
    /// `dx`, and its `dy·x̂` terms added into `gain_sums` (f64) when given.
    fn backward_fallback(
        layer: Layer<'_, Self::Wide>,
        x_and_dy: (&[Self], &[Self]),
        mean_and_inv_std: (f64, f64),
        dx: &mut [Self],
        gain_sums: Option<&mut [f64]>,
    );
}

/// Vector `k` is past the row's full vectors: a kernel's indexing bug.
#[cold]
#[inline(never)]
fn past_the_row(k: usize) -> ! {
    panic!("vector {k} is not one of the row's full vectors")
}

/// f32 and f64: stored as computed.
macro_rules! plain_storage {
    ($float:ty) => {
        impl Storage for $float {
            type Wide = $float;
            type Vectors<'a, S: Simd> = &'a [<$float as SimdFloat>::Vector<S>];
            type VectorsMut<'a, S: Simd> = OutVectors<'a, <$float as SimdFloat>::Vector<S>>;
            const CACHED_LOOP_COPY: bool = false;
            const PLAIN_NAN_STORES: bool = false;

            fn runs_on_avx2() -> bool {
                true
            }

            fn wide_layer(layer: Layer<'_, Self>) -> Layer<'_, Self> {
                layer
            }
            #[inline(always)]
            fn stat_to_f64(value: f64) -> f64 {
                value
            }
            #[inline(always)]
            fn stat_from_f64(value: f64) -> f64 {
                value
            }
            #[inline(always)]
            fn widen(value: Self) -> Self {
                value
            }
            #[inline(always)]
            fn split<S: Simd>(values: &[Self]) -> (Self::Vectors<'_, S>, &[Self]) {
                <$float as SimdFloat>::split::<S>(values)
            }
            #[inline(always)]
            fn split_mut<S: Simd>(
                values: &mut [Self],
                stores: Stores,
            ) -> (Self::VectorsMut<'_, S>, &mut [Self]) {
                let (vectors, tail) = <$float as SimdFloat>::split_mut::<S>(values);
                (OutVectors::new(stores, vectors), tail)
            }
            #[inline(always)]
            fn count<S: Simd>(vectors: &Self::Vectors<'_, S>) -> usize {
                vectors.len()
            }
            #[inline(always)]
            fn count_mut<S: Simd>(vectors: &Self::VectorsMut<'_, S>) -> usize {
                vectors.len()
            }
            #[inline(always)]
            fn first<'a, S: Simd>(
                vectors: Self::Vectors<'a, S>,
                len: usize,
            ) -> Self::Vectors<'a, S> {
                &vectors[..len]
            }
            #[inline(always)]
            fn first_mut<'a, S: Simd>(
                vectors: Self::VectorsMut<'a, S>,
                len: usize,
            ) -> Self::VectorsMut<'a, S> {
                vectors.first(len)
            }
            #[inline(always)]
            fn load<S: Simd>(
                _simd: S,
                vectors: &Self::Vectors<'_, S>,
                k: usize,
            ) -> WideVector<Self, S> {
                vectors[k]
            }
            #[inline(always)]
            fn load_mut<S: Simd>(
                _simd: S,
                vectors: &Self::VectorsMut<'_, S>,
                k: usize,
            ) -> WideVector<Self, S> {
                vectors.get(k).unwrap_or_else(|| past_the_row(k))
            }
            #[inline(always)]
            fn store<S: Simd>(
                _simd: S,
                vectors: &mut Self::VectorsMut<'_, S>,
                k: usize,
                vector: WideVector<Self, S>,
            ) {
                vectors.put(k, vector);
            }
            #[inline(always)]
            fn load_partial<S: Simd>(simd: S, values: &[Self]) -> WideVector<Self, S> {
                <$float as SimdFloat>::load_partial(simd, values)
            }
            #[inline(always)]
            fn store_partial<S: Simd>(simd: S, values: &mut [Self], vector: WideVector<Self, S>) {
                <$float as SimdFloat>::store_partial(simd, values, vector)
            }

            fn forward_fallback(
                layer: Layer<'_, Self>,
                x: Option<&[Self]>,
                out: &mut [Self],
                stats: Option<RowStatsOut<'_, f64>>,
            ) {
                scalar::forward_rows(ForwardRows {
                    layer,
                    x,
                    out,
                    stats,
                });
            }

            fn backward_fallback(
                layer: Layer<'_, Self>,
                (x, dy): (&[Self], &[Self]),
                (mean, inv_std): (f64, f64),
                dx: &mut [Self],
                gain_sums: Option<&mut [f64]>,
            ) {
                scalar::backward_rows(BackwardJob {
                    rows: BackwardRows {
                        layer,
                        x,
                        dy,
                        means: &[mean],
                        inv_stds: &[inv_std],
                    },
                    out: BackwardOut {
                        dx,
                        dsum: None,
                        sums: GradSums {
                            gain: gain_sums,
                            bias: None,
                        },
                    },
                });
            }
        }
    };
}

plain_storage!(f32);
plain_storage!(f64);
