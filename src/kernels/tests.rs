//! Every dispatched SIMD kernel this CPU can run against the scalar specification, on every
//! row length from 1 to 130 and 1020 to 1030 (crossing every vector width, accumulator block
//! and remainder), at slice offsets that cross alignment, with and without gain and bias,
//! in place and out of place, and on rows that must take the scalar fallback.
//!
//! Tolerance: the fast path rounds a few times in the data type where the specification rounds
//! once from f64, so outputs may differ by a few ulps of the row's output scale (3 for f32).
//! For f64 the specification's plain f64 mean is itself off by ~ulp(|μ|)/σ of the scale, so
//! the allowance grows with the row's offset.

use super::simd::{Backward, SimdFloat, Storage};
use super::{
    prefetch, scalar, BackwardJob, BackwardOut, BackwardRows, ForwardRows, GradSums, Layer,
    RowStatsOut, Stores,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const LENGTHS: [std::ops::RangeInclusive<usize>; 2] = [1..=130, 1020..=1030];
const OFFSETS: [usize; 3] = [0, 1, 3];
const ROWS: usize = 3;

/// Every instruction set the kernels can be dispatched to here, the scalar one included.
fn instruction_sets() -> Vec<(&'static str, pulp::Arch)> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut sets = vec![("best", pulp::Arch::new()), ("scalar", pulp::Arch::Scalar)];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(simd) = pulp::x86::V3::try_new() {
            sets.push(("avx2", pulp::Arch::V3(simd)));
        }
        if let Some(simd) = pulp::x86::V4::try_new() {
            sets.push(("avx512", pulp::Arch::V4(simd)));
        }
    }
    sets
}

fn ulp_of<T: SimdFloat + Storage>(magnitude: f64) -> f64 {
    T::epsilon().to_stat() * magnitude.abs().max(f64::MIN_POSITIVE)
}

/// Checks `fast` against `spec` row by row, within `ulps` of each row's natural scale: the
/// size of the terms the result is computed from, so that results that cancel to nearly zero
/// are judged by the precision of what cancelled.
fn assert_rows_close<T: SimdFloat + Storage>(
    what: &str,
    fast: &[T],
    spec: &[T],
    scales: &[f64],
    ulps: f64,
) {
    let dim = fast.len() / scales.len();
    for (row, (fast_row, spec_row)) in fast.chunks(dim).zip(spec.chunks(dim)).enumerate() {
        let scale = scales[row];
        for (i, (f, s)) in fast_row.iter().zip(spec_row).enumerate() {
            let difference = (f.to_stat() - s.to_stat()).abs();
            assert!(
                difference <= ulps * ulp_of::<T>(scale),
                "{what}: row {row} [{i}] of {dim}: fast {f} spec {s} (scale {scale})"
            );
        }
    }
}

struct Data<T> {
    x: Vec<T>,
    dy: Vec<T>,
    gain: Vec<T>,
    bias: Vec<T>,
}

fn data<T: SimdFloat + Storage>(rng: &mut StdRng, len: usize, dim: usize, offset: f64) -> Data<T> {
    let mut values = |len: usize, center: f64, spread: f64| -> Vec<T> {
        (0..len)
            .map(|_| T::from_stat(center + spread * rng.random_range(-1.0..1.0)))
            .collect()
    };
    Data {
        x: values(len, offset, 2.0),
        dy: values(len, 0.0, 1.0),
        gain: values(dim, 1.0, 0.5),
        bias: values(dim, 0.0, 0.5),
    }
}

/// Layers of `dim` (eps 1e-5, ordinary stores): LayerNorm (centered) with every parameter
/// combination, RmsNorm with gain and with bias alone.
fn parameter_layers<'a, T: SimdFloat + Storage>(
    dim: usize,
    gain: &'a [T],
    bias: &'a [T],
) -> [Layer<'a, T>; 5] {
    [
        (Some(gain), Some(bias), true),
        (Some(gain), None, true),
        (None, None, true),
        (Some(gain), None, false),
        (None, Some(bias), false),
    ]
    .map(|(gain, bias, centered)| Layer {
        dim,
        gain,
        bias,
        centered,
        eps: 1e-5,
        stores: Stores::Cached,
        prefetch: false,
    })
}

fn check_type<T: SimdFloat + Storage>(ulps_at_zero_offset: f64, offsets: &[f64]) {
    let mut rng = StdRng::seed_from_u64(5);
    for (name, arch) in instruction_sets() {
        for dim in LENGTHS.into_iter().flatten() {
            for &start in &OFFSETS {
                for &mean_offset in offsets {
                    let ulps = ulps_at_zero_offset * (1.0 + mean_offset.abs());
                    let len = start + ROWS * dim;
                    let data = data::<T>(&mut rng, len, dim, mean_offset);
                    let x = &data.x[start..];
                    let dy = &data.dy[start..];
                    for layer in parameter_layers(dim, &data.gain, &data.bias) {
                        let context = format!(
                            "{name} dim {dim} start {start} offset {mean_offset} gain {} bias {} centered {}",
                            layer.gain.is_some(),
                            layer.bias.is_some(),
                            layer.centered
                        );
                        check_forward(arch, x, layer, ulps, &context);
                        check_backward(arch, x, dy, layer, ulps, &context);
                    }
                }
            }
        }
    }
}

/// Forward of `x` (`None`: in place in `out`) on `arch`, or by the specification.
fn forward<T: SimdFloat + Storage>(
    arch: Option<pulp::Arch>,
    layer: Layer<'_, T>,
    x: Option<&[T]>,
    out: &mut [T],
    stats: Option<RowStatsOut<'_, f64>>,
) {
    let job = ForwardRows {
        layer,
        x,
        out,
        stats,
    };
    match arch {
        Some(arch) => arch.dispatch(job),
        None => scalar::forward_rows(job),
    }
}

fn check_forward<T: SimdFloat + Storage>(
    arch: pulp::Arch,
    x: &[T],
    layer: Layer<'_, T>,
    ulps: f64,
    context: &str,
) {
    let (dim, params) = (layer.dim, layer);
    let rows = x.len() / dim;
    let (mut spec_mean, mut spec_inv_std) = (vec![0.0; rows], vec![0.0; rows]);
    let mut spec = vec![T::zero(); x.len()];
    let spec_stats = RowStatsOut {
        mean: &mut spec_mean,
        inv_std: &mut spec_inv_std,
    };
    forward(None, layer, Some(x), &mut spec, Some(spec_stats));
    let (mut mean, mut inv_std) = (vec![0.0; rows], vec![0.0; rows]);
    let mut fast = vec![T::zero(); x.len()];
    let stats = RowStatsOut {
        mean: &mut mean,
        inv_std: &mut inv_std,
    };
    forward(Some(arch), layer, Some(x), &mut fast, Some(stats));
    // y = gain · x̂ + bias: its scale is max |gain · x̂| + max |bias|.
    let magnitude = |values: Option<&[T]>| {
        values.map_or(1.0, |v| {
            v.iter().fold(0.0f64, |m, v| m.max(v.to_stat().abs()))
        })
    };
    let y_scales: Vec<f64> = x
        .chunks(dim)
        .enumerate()
        .map(|(row, x_row)| {
            let max_x_hat = x_row.iter().fold(0.0f64, |m, v| {
                m.max(((v.to_stat() - spec_mean[row]) * spec_inv_std[row]).abs())
            });
            magnitude(params.gain) * max_x_hat + params.bias.map_or(0.0, |b| magnitude(Some(b)))
        })
        .collect();
    assert_rows_close(&format!("y {context}"), &fast, &spec, &y_scales, ulps);
    for row in 0..rows {
        let scale = 1.0 / spec_inv_std[row];
        assert!(
            (mean[row] - spec_mean[row]).abs() <= ulps * ulp_of::<T>(scale),
            "mean {context}"
        );
        assert!(
            (inv_std[row] / spec_inv_std[row] - 1.0).abs() <= ulps * ulp_of::<T>(1.0),
            "inv_std {context}"
        );
    }
    let mut in_place = x.to_vec();
    forward(Some(arch), layer, None, &mut in_place, None);
    assert!(
        in_place == fast,
        "in place differs from out of place: {context}"
    );
}

/// Backward on `arch`, or by the specification.
fn backward<T: SimdFloat + Storage>(
    arch: Option<pulp::Arch>,
    rows: BackwardRows<'_, T>,
    dx: &mut [T],
    dsum: Option<&[T]>,
    sums: GradSums<'_, f64>,
) {
    match arch {
        Some(arch) => arch.dispatch(Backward {
            rows,
            dx,
            dsum,
            totals: sums,
            // One row of totals for the whole call.
            group_rows: usize::MAX,
            scratch: &mut Vec::new(),
        }),
        None => scalar::backward_rows(BackwardJob {
            rows,
            out: BackwardOut { dx, dsum, sums },
        }),
    }
}

fn both_sums<'a>(gain: &'a mut [f64], bias: &'a mut [f64]) -> GradSums<'a, f64> {
    GradSums {
        gain: Some(gain),
        bias: Some(bias),
    }
}

fn check_backward<T: SimdFloat + Storage>(
    arch: pulp::Arch,
    x: &[T],
    dy: &[T],
    layer: Layer<'_, T>,
    ulps: f64,
    context: &str,
) {
    let (dim, gain) = (layer.dim, layer.gain);
    let rows = x.len() / dim;
    let (mut means, mut inv_stds) = (vec![0.0; rows], vec![0.0; rows]);
    let mut y = vec![T::zero(); x.len()];
    let stats = RowStatsOut {
        mean: &mut means,
        inv_std: &mut inv_stds,
    };
    forward(None, layer, Some(x), &mut y, Some(stats));
    let backward_rows = BackwardRows {
        layer,
        x,
        dy,
        means: &means,
        inv_stds: &inv_stds,
    };

    let mut spec_dx = vec![T::zero(); x.len()];
    let (mut spec_gain, mut spec_bias) = (vec![0.0; dim], vec![0.0; dim]);
    let spec_sums = both_sums(&mut spec_gain, &mut spec_bias);
    backward(None, backward_rows, &mut spec_dx, None, spec_sums);

    let mut dx = vec![T::zero(); x.len()];
    let (mut partial_gain, mut partial_bias) = (vec![0.0; dim], vec![0.0; dim]);
    let sums = both_sums(&mut partial_gain, &mut partial_bias);
    backward(Some(arch), backward_rows, &mut dx, None, sums);
    // dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)): its scale is r · max |g| per row.
    let g = |row: usize, i: usize| {
        gain.map_or(1.0, |gain| gain[i].to_stat()) * dy[row * dim + i].to_stat()
    };
    let dx_scales: Vec<f64> = (0..rows)
        .map(|row| inv_stds[row] * (0..dim).fold(0.0f64, |m, i| m.max(g(row, i).abs())))
        .collect();
    assert_rows_close(&format!("dx {context}"), &dx, &spec_dx, &dx_scales, ulps);
    // Parameter-gradient sums over the rows: scale rows · max |dy| · √dim (|x̂| ≤ √dim).
    let as_t = |values: &[f64]| values.iter().map(|&v| T::from_stat(v)).collect::<Vec<T>>();
    let max_dy = dy.iter().fold(0.0f64, |m, v| m.max(v.to_stat().abs()));
    let sum_scale = [max_dy * rows as f64 * (dim as f64).sqrt()];
    for (what, fast, spec) in [
        ("dgain", &partial_gain, &spec_gain),
        ("dbias", &partial_bias, &spec_bias),
    ] {
        assert_rows_close(
            &format!("{what} {context}"),
            &as_t(fast),
            &as_t(spec),
            &sum_scale,
            ulps,
        );
    }

    let no_sums = || GradSums {
        gain: None,
        bias: None,
    };
    let mut dx_only = vec![T::zero(); x.len()];
    backward(Some(arch), backward_rows, &mut dx_only, None, no_sums());
    assert!(
        dx_only == dx,
        "dx depends on whether parameter gradients are wanted: {context}"
    );
    // dsum is added to each row's dx after it is computed, in the data type.
    let dsum: Vec<T> = dy.iter().map(|&v| v * T::from_stat(0.25)).collect();
    let mut dx_with_sum = vec![T::zero(); x.len()];
    backward(
        Some(arch),
        backward_rows,
        &mut dx_with_sum,
        Some(&dsum),
        no_sums(),
    );
    let expected: Vec<T> = dx.iter().zip(&dsum).map(|(&a, &b)| a + b).collect();
    assert!(dx_with_sum == expected, "dx + dsum: {context}");
}

/// `SimdFloat::keep_first` on every instruction set and every count of kept lanes: the first
/// lanes keep their bits (NaN, infinities and -0.0 included), the others become +0.0.
struct KeepFirst<T>(std::marker::PhantomData<T>);

impl<T: SimdFloat> pulp::WithSimd for KeepFirst<T> {
    type Output = ();

    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let lanes = size_of::<T::Vector<S>>() / size_of::<T>();
        let specials = [
            T::nan(),
            T::infinity(),
            T::neg_zero(),
            -T::one(),
            T::min_positive_value(),
        ];
        let values: Vec<T> = (0..lanes)
            .map(|lane| specials[lane % specials.len()])
            .collect();
        let bits = |value: T| value.to_stat().to_bits();
        let vector = T::split::<S>(&values).0[0];
        for valid in 0..lanes {
            let kept = T::keep_first(simd, vector, valid);
            let kept: &[T] = bytemuck::cast_slice(std::slice::from_ref(&kept));
            for (lane, (&got, &value)) in kept.iter().zip(&values).enumerate() {
                let want = if lane < valid { value } else { T::zero() };
                assert_eq!(
                    bits(got),
                    bits(want),
                    "lane {lane} of {lanes}, {valid} kept"
                );
            }
        }
    }
}

#[test]
fn keep_first_zeroes_exactly_the_lanes_past_the_count() {
    for (_, arch) in instruction_sets() {
        arch.dispatch(KeepFirst::<f32>(std::marker::PhantomData));
        arch.dispatch(KeepFirst::<f64>(std::marker::PhantomData));
    }
}

#[test]
fn f32_kernels_match_the_specification_on_every_length_and_alignment() {
    check_type::<f32>(3.0, &[0.0, 1e4]);
}

#[test]
fn f64_kernels_match_the_specification_on_every_length_and_alignment() {
    check_type::<f64>(8.0, &[0.0, 30.0]);
}

/// Rows of several kinds, interleaved so that every transition between a fast row and a row
/// the fast path hands to the specification occurs, in short-row blocks and long-row pipelines.
fn mixed_rows(dim: usize) -> (Vec<f32>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(dim as u64);
    let mut x = Vec::new();
    let mut falls_back = Vec::new();
    for kind in [0, 1, 0, 2, 3, 0, 4, 5, 0, 6, 0] {
        let row: Vec<f32> = (0..dim)
            .map(|i| {
                let normal = 3.0 + rng.random_range(-1.0f32..1.0);
                match kind {
                    1 => {
                        if i % 2 == 0 {
                            f32::MAX
                        } else {
                            -f32::MAX
                        }
                    }
                    2 if i == 3 % dim => f32::NAN,
                    3 => 1e-30 * i as f32,
                    4 if i == 5 % dim => f32::INFINITY,
                    5 => 7.25,
                    // A first estimate of the mean far off: the first values are huge.
                    6 if i < dim / 4 => 1e6,
                    _ => normal,
                }
            })
            .collect();
        falls_back.push((1..=5).contains(&kind));
        x.extend(row);
    }
    (x, falls_back)
}

#[test]
fn rows_the_fast_path_cannot_take_fall_back_to_the_specification() {
    // 200: short rows (one block of statistics) whose first estimate of the mean is refined.
    for dim in [37, 200, 300, 1000] {
        let (x, falls_back) = mixed_rows(dim);
        let layer = Layer {
            dim,
            gain: None,
            bias: None,
            centered: true,
            eps: 0.0,
            stores: Stores::Cached,
            prefetch: false,
        };
        let mut spec = vec![0.0f32; x.len()];
        forward(None, layer, Some(&x), &mut spec, None);
        for (name, arch) in instruction_sets() {
            let mut fast = vec![0.0f32; x.len()];
            forward(Some(arch), layer, Some(&x), &mut fast, None);
            let mut in_place = x.clone();
            forward(Some(arch), layer, None, &mut in_place, None);
            let same_bits =
                |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(
                fast.iter().zip(&in_place).all(|(a, b)| same_bits(a, b)),
                "{name} {dim}: in place"
            );
            for (row, &fallback) in falls_back.iter().enumerate() {
                let range = row * dim..(row + 1) * dim;
                let (fast_row, spec_row) = (&fast[range.clone()], &spec[range]);
                if fallback {
                    let same = fast_row.iter().zip(spec_row).all(|(a, b)| same_bits(a, b));
                    assert!(
                        same,
                        "{name} {dim}: row {row} differs from the specification"
                    );
                } else {
                    let scale = spec_row.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
                    let close = fast_row
                        .iter()
                        .zip(spec_row)
                        .all(|(a, b)| ((a - b).abs() as f64) <= 3.0 * ulp_of::<f32>(scale));
                    assert!(close, "{name} {dim}: row {row} is off");
                }
            }
            assert!(
                fast[dim..2 * dim].iter().all(|v| v.is_finite()),
                "{name}: ±MAX row"
            );
            assert!(
                fast[4 * dim..5 * dim].iter().all(|v| v.is_finite()),
                "{name}: tiny row, eps 0"
            );
        }
    }
}

/// The store choices the kernels are compared under: both store paths.
fn store_choices() -> [Stores; 2] {
    [Stores::Cached, Stores::streaming()]
}

/// Everything one instruction set computes for `x`: forward out of place (y, means, inv_stds),
/// in place, and backward (dx, gain sums, bias sums), as bit patterns.
fn all_results<T: SimdFloat + Storage>(
    arch: pulp::Arch,
    x: &[T],
    dy: &[T],
    layer: Layer<'_, T>,
) -> Vec<Vec<u64>> {
    let bits =
        |values: &[T]| -> Vec<u64> { values.iter().map(|v| v.to_stat().to_bits()).collect() };
    let f64_bits = |values: &[f64]| -> Vec<u64> { values.iter().map(|v| v.to_bits()).collect() };
    let (dim, rows) = (layer.dim, x.len() / layer.dim);
    let (mut means, mut inv_stds) = (vec![0.0; rows], vec![0.0; rows]);
    let mut y = vec![T::zero(); x.len()];
    let stats = RowStatsOut {
        mean: &mut means,
        inv_std: &mut inv_stds,
    };
    forward(Some(arch), layer, Some(x), &mut y, Some(stats));
    let mut in_place = x.to_vec();
    forward(Some(arch), layer, None, &mut in_place, None);
    let rows_in = BackwardRows {
        layer,
        x,
        dy,
        means: &means,
        inv_stds: &inv_stds,
    };
    let mut dx = vec![T::zero(); x.len()];
    let (mut gain_sums, mut bias_sums) = (vec![0.0; dim], vec![0.0; dim]);
    let sums = both_sums(&mut gain_sums, &mut bias_sums);
    backward(Some(arch), rows_in, &mut dx, None, sums);
    // With a `dsum` added to each row (the fused residual step's backward), no sums wanted.
    let dsum: Vec<T> = dy.iter().map(|&v| v * T::from_stat(0.25)).collect();
    let mut dx_with_sum = vec![T::zero(); x.len()];
    let no_sums = GradSums {
        gain: None,
        bias: None,
    };
    let rows_in = BackwardRows {
        layer,
        x,
        dy,
        means: &means,
        inv_stds: &inv_stds,
    };
    backward(Some(arch), rows_in, &mut dx_with_sum, Some(&dsum), no_sums);
    vec![
        bits(&y),
        f64_bits(&means),
        f64_bits(&inv_stds),
        bits(&in_place),
        bits(&dx),
        f64_bits(&gain_sums),
        f64_bits(&bias_sums),
        bits(&dx_with_sum),
    ]
}

/// The same bits on every instruction set: each one's results equal the scalar path's bit for
/// bit, on every length from 1 to 130 and around 1024, at three alignments, with and without
/// parameters, for LayerNorm and RmsNorm, and on rows that take the exact fallback.
fn check_same_bits<T: SimdFloat + Storage>(offsets: &[f64]) {
    let mut rng = StdRng::seed_from_u64(9);
    let sets = instruction_sets();
    for dim in LENGTHS.into_iter().flatten() {
        for &start in &OFFSETS {
            for &mean_offset in offsets {
                let data = data::<T>(&mut rng, start + ROWS * dim, dim, mean_offset);
                let (x, dy) = (&data.x[start..], &data.dy[start..]);
                for (gain, bias, centered) in [
                    (Some(&data.gain[..]), Some(&data.bias[..]), true),
                    (None, None, true),
                    (Some(&data.gain[..]), None, false),
                    (None, Some(&data.bias[..]), false),
                ] {
                    let layer = Layer {
                        dim,
                        gain,
                        bias,
                        centered,
                        eps: 1e-5,
                        stores: Stores::Cached,
                        prefetch: false,
                    };
                    let reference = all_results(pulp::Arch::Scalar, x, dy, layer);
                    for &(name, arch) in &sets {
                        for stores in store_choices() {
                            let layer = Layer { stores, ..layer };
                            assert!(
                                all_results(arch, x, dy, layer) == reference,
                                "{name} {stores:?} differs from scalar: dim {dim} start {start} offset {mean_offset} centered {centered}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_results_are_the_same_bits_on_every_instruction_set() {
    check_same_bits::<f32>(&[0.0, 1e4]);
}

#[test]
fn f64_results_are_the_same_bits_on_every_instruction_set() {
    check_same_bits::<f64>(&[0.0, 30.0]);
}

#[test]
fn fallback_rows_are_the_same_bits_on_every_instruction_set() {
    for dim in [5, 37, 300, 1000] {
        // Three copies of the mixed rows (33 rows): ordinary and fallback rows also past the
        // first 16, which the short-row forward computes ahead of writing.
        let x = mixed_rows(dim).0.repeat(3);
        let dy: Vec<f32> = (0..x.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let layer = Layer {
            dim,
            gain: None,
            bias: None,
            centered: true,
            eps: 0.0,
            stores: Stores::Cached,
            prefetch: false,
        };
        let reference = all_results(pulp::Arch::Scalar, &x, &dy, layer);
        for (name, arch) in instruction_sets() {
            for stores in store_choices() {
                let layer = Layer { stores, ..layer };
                assert!(
                    all_results(arch, &x, &dy, layer) == reference,
                    "{name} {stores:?} differs from scalar on mixed rows of {dim}"
                );
            }
        }
    }
}

/// The hint for rows ahead (short rows from memory, see `prefetch`) changes no value: with it,
/// every instruction set's results equal the scalar path's without it, on calls with rows
/// short of the distance hinted, just past it, and past it by a partial block (the last hint
/// cut at the end of the rows), in and out of place, for every short-row length class.
fn check_prefetch_changes_nothing<T: SimdFloat + Storage>() {
    let mut rng = StdRng::seed_from_u64(11);
    for dim in [1, 7, 64, 100, 1024 / size_of::<T>()] {
        let ahead = (prefetch::AHEAD_BYTES / (dim * size_of::<T>())).next_multiple_of(16);
        for rows in [ahead - 1, ahead + 1, ahead + 16 + 5] {
            let data = data::<T>(&mut rng, rows * dim, dim, 1.0);
            let layer = Layer {
                dim,
                gain: Some(&data.gain[..]),
                bias: Some(&data.bias[..]),
                centered: true,
                eps: 1e-5,
                stores: Stores::Cached,
                prefetch: false,
            };
            let reference = all_results(pulp::Arch::Scalar, &data.x, &data.dy, layer);
            for (name, arch) in instruction_sets() {
                let hinted = Layer {
                    prefetch: true,
                    ..layer
                };
                assert!(
                    all_results(arch, &data.x, &data.dy, hinted) == reference,
                    "{name} with the hint differs from scalar: dim {dim}, {rows} rows"
                );
            }
        }
    }
}

/// The forward's two loops for long rows (pass 3 of each row fused with pass 2 of the next,
/// or each row's passes one after the other: see `simd::forward::FUSED_ROW_BYTES`) give the
/// same bits, on every instruction set and with either store: at lengths on both sides of the
/// rule's bound, with every parameter combination, and with a row that takes the scalar
/// fallback between fast ones.
fn check_long_row_loops_agree<T: SimdFloat + Storage>() {
    use super::simd::{FORCE_FUSED_ROWS, FUSED_ROW_BYTES};
    let with_loop = |fused: bool, run: &dyn Fn() -> Vec<Vec<u64>>| {
        FORCE_FUSED_ROWS.with(|force| force.set(Some(fused)));
        let results = run();
        FORCE_FUSED_ROWS.with(|force| force.set(None));
        results
    };
    let mut rng = StdRng::seed_from_u64(13);
    // The longest row the rule fuses with gain and bias is one short of `bound`.
    let bound = FUSED_ROW_BYTES / (4 * size_of::<T>());
    for dim in [300, bound - 1, bound, bound + 5] {
        let rows = 5;
        let mut data = data::<T>(&mut rng, rows * dim, dim, 1.0);
        // Row 2 overflows its squares: the scalar specification writes it.
        data.x[2 * dim + 3] = T::max_value();
        for layer in parameter_layers(dim, &data.gain, &data.bias) {
            let reference = with_loop(false, &|| {
                all_results(pulp::Arch::Scalar, &data.x, &data.dy, layer)
            });
            for (name, arch) in instruction_sets() {
                for stores in store_choices() {
                    let layer = Layer { stores, ..layer };
                    for fused in [false, true] {
                        let results =
                            with_loop(fused, &|| all_results(arch, &data.x, &data.dy, layer));
                        assert!(
                            results == reference,
                            "{name} {stores:?}, fused {fused}: differs from scalar at dim {dim} \
                             (gain {}, bias {}, centered {})",
                            layer.gain.is_some(),
                            layer.bias.is_some(),
                            layer.centered
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f32_long_row_loops_agree() {
    check_long_row_loops_agree::<f32>();
}

#[test]
fn f64_long_row_loops_agree() {
    check_long_row_loops_agree::<f64>();
}

#[test]
fn f32_results_do_not_change_with_the_prefetch_hint() {
    check_prefetch_changes_nothing::<f32>();
}

#[test]
fn f64_results_do_not_change_with_the_prefetch_hint() {
    check_prefetch_changes_nothing::<f64>();
}

#[test]
fn the_instruction_set_cap_is_read_from_its_name() {
    use super::simd::capped_arch;
    assert!(matches!(capped_arch(Some("scalar")), pulp::Arch::Scalar));
    assert!(matches!(capped_arch(Some(" SCALAR ")), pulp::Arch::Scalar));
    // Unknown values and no value mean no cap: the widest set this CPU has.
    let best = format!("{:?}", pulp::Arch::new());
    assert_eq!(format!("{:?}", capped_arch(Some("avx9000"))), best);
    assert_eq!(format!("{:?}", capped_arch(None)), best);
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        assert_eq!(
            format!("{:?}", capped_arch(Some("avx2"))),
            format!("{:?}", pulp::Arch::V3(v3))
        );
    }
}

/// Every element type's forward and backward on every instruction set, on a thread with a
/// 1 MiB stack (half the default of rayon's workers and test threads): debug builds, whose
/// frames are large (see `kernels::simd` on stack use), must fit in it too.
#[test]
fn kernels_fit_a_small_thread_stack() {
    fn run<T: SimdFloat + Storage>() {
        let dim = 1000;
        let mut rng = StdRng::seed_from_u64(5);
        let data = data::<T>(&mut rng, 4 * dim, dim, 0.0);
        for &(_, arch) in &instruction_sets() {
            for stores in store_choices() {
                let layer = Layer {
                    dim,
                    gain: Some(&data.gain),
                    bias: Some(&data.bias),
                    centered: true,
                    eps: 1e-5,
                    stores,
                    prefetch: false,
                };
                let mut y = vec![T::zero(); data.x.len()];
                let (mut means, mut inv_stds) = (vec![0.0f64; 4], vec![0.0f64; 4]);
                let stats = RowStatsOut {
                    mean: &mut means,
                    inv_std: &mut inv_stds,
                };
                forward(Some(arch), layer, Some(&data.x), &mut y, Some(stats));
                let rows = BackwardRows {
                    layer,
                    x: &data.x,
                    dy: &data.dy,
                    means: &means,
                    inv_stds: &inv_stds,
                };
                let (mut gain_sums, mut bias_sums) = (vec![0.0; dim], vec![0.0; dim]);
                let mut dx = vec![T::zero(); data.x.len()];
                backward(
                    Some(arch),
                    rows,
                    &mut dx,
                    None,
                    both_sums(&mut gain_sums, &mut bias_sums),
                );
                assert!(dx.iter().chain(&y).all(|v| v.is_finite()));
            }
        }
    }
    let thread = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
        run::<f32>();
        run::<f64>();
        #[cfg(feature = "half")]
        {
            half_rows::run_small_stack::<half::f16>();
            half_rows::run_small_stack::<half::bf16>();
        }
    });
    thread.expect("a thread").join().expect("no stack overflow");
}

/// Half rows: on every instruction set (and both store paths), y, the statistics, in-place y,
/// dx and the parameter-gradient totals are the f32 kernels' results on the rows widened to
/// f32, rounded once (y, dx to half; statistics to f32; totals unrounded f64), bit for bit, on
/// every length from 1 to 130 and around 1024, at three alignments, with fallback rows.
#[cfg(feature = "half")]
mod half_rows {
    use super::*;
    use crate::kernels::half::HalfElement;

    /// Every result of a half layer, as bits: `arch = None` runs the f32 kernels on the
    /// widened rows (scalar instruction set) and rounds their results.
    fn results<H: HalfElement + Storage<Wide = f32>>(
        arch: Option<pulp::Arch>,
        x: &[H],
        dy: &[H],
        layer: Layer<'_, H>,
    ) -> Vec<Vec<u64>> {
        let (dim, rows) = (layer.dim, x.len() / layer.dim);
        // A NaN's sign and payload are not specified by Rust (optimized builds may commute
        // the operands of an addition of two NaNs), so every NaN compares as one value.
        let f64_bits = |values: &mut dyn Iterator<Item = f64>| -> Vec<u64> {
            values
                .map(|v| if v.is_nan() { u64::MAX } else { v.to_bits() })
                .collect()
        };
        let half_bits =
            |values: &[H]| f64_bits(&mut values.iter().map(|v| f64::from(v.widen_one())));
        let f32_bits = |values: &[f32]| f64_bits(&mut values.iter().map(|&v| f64::from(v)));
        let (mut means, mut inv_stds) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        let (mut gain_totals, mut bias_totals) = (vec![0.0f64; dim], vec![0.0f64; dim]);
        let (y, in_place, dx) = match arch {
            Some(arch) => {
                let mut y = vec![H::narrow_one(0.0); x.len()];
                let stats = RowStatsOut {
                    mean: &mut means,
                    inv_std: &mut inv_stds,
                };
                arch.dispatch(ForwardRows {
                    layer,
                    x: Some(x),
                    out: &mut y,
                    stats: Some(stats),
                });
                let mut in_place = x.to_vec();
                arch.dispatch(ForwardRows {
                    layer,
                    x: None,
                    out: &mut in_place,
                    stats: None,
                });
                let mut dx = y.clone();
                let rows_in = BackwardRows {
                    layer,
                    x,
                    dy,
                    means: &means,
                    inv_stds: &inv_stds,
                };
                arch.dispatch(Backward {
                    rows: rows_in,
                    dx: &mut dx,
                    dsum: None,
                    totals: both_sums(&mut gain_totals, &mut bias_totals),
                    group_rows: usize::MAX,
                    scratch: &mut Vec::new(),
                });
                (half_bits(&y), half_bits(&in_place), half_bits(&dx))
            }
            None => {
                let wide = H::wide_layer(layer);
                let widen =
                    |values: &[H]| -> Vec<f32> { values.iter().map(|v| v.widen_one()).collect() };
                let (x_wide, dy_wide) = (widen(x), widen(dy));
                let narrow = |values: &[f32]| -> Vec<H> {
                    values.iter().map(|&v| H::narrow_one(v)).collect()
                };
                let (mut wide_means, mut wide_inv_stds) = (vec![0.0f64; rows], vec![0.0f64; rows]);
                let mut y = vec![0.0f32; x.len()];
                let stats = RowStatsOut {
                    mean: &mut wide_means,
                    inv_std: &mut wide_inv_stds,
                };
                forward(
                    Some(pulp::Arch::Scalar),
                    wide,
                    Some(&x_wide),
                    &mut y,
                    Some(stats),
                );
                for row in 0..rows {
                    means[row] = wide_means[row] as f32;
                    inv_stds[row] = wide_inv_stds[row] as f32;
                }
                let saved: Vec<(f64, f64)> = (0..rows)
                    .map(|row| (f64::from(means[row]), f64::from(inv_stds[row])))
                    .collect();
                let (saved_means, saved_inv_stds): (Vec<f64>, Vec<f64>) = saved.into_iter().unzip();
                let mut dx = vec![0.0f32; x.len()];
                let rows_in = BackwardRows {
                    layer: wide,
                    x: &x_wide,
                    dy: &dy_wide,
                    means: &saved_means,
                    inv_stds: &saved_inv_stds,
                };
                let sums = both_sums(&mut gain_totals, &mut bias_totals);
                backward(Some(pulp::Arch::Scalar), rows_in, &mut dx, None, sums);
                let y = half_bits(&narrow(&y));
                (y.clone(), y, half_bits(&narrow(&dx)))
            }
        };
        vec![
            y,
            f32_bits(&means),
            f32_bits(&inv_stds),
            in_place,
            dx,
            f64_bits(&mut gain_totals.iter().copied()),
            f64_bits(&mut bias_totals.iter().copied()),
        ]
    }

    fn check<H: HalfElement + Storage<Wide = f32>>(signaling_nan: u16) {
        let mut rng = StdRng::seed_from_u64(13);
        let sets = instruction_sets();
        let mut cases: Vec<(usize, Vec<f32>, Vec<f32>)> = Vec::new();
        for dim in LENGTHS.into_iter().flatten() {
            for &start in &OFFSETS {
                let data = data::<f32>(&mut rng, start + ROWS * dim, dim, 0.0);
                cases.push((dim, data.x[start..].to_vec(), data.dy[start..].to_vec()));
            }
        }
        for dim in [5, 37, 300, 1000] {
            let (x, _) = mixed_rows(dim);
            let dy = (0..x.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            cases.push((dim, x, dy));
        }
        for (case, (dim, x, dy)) in cases.into_iter().enumerate() {
            let mut x: Vec<H> = x.iter().map(|&v| H::narrow_one(v)).collect();
            let mut dy: Vec<H> = dy.iter().map(|&v| H::narrow_one(v)).collect();
            // Signaling NaNs (which the AVX2 bf16 path loads unquieted): in dy of an ordinary
            // row, and in x of another.
            if case % 4 == 1 && x.len() >= 2 * dim {
                dy[dim / 2] = bytemuck::cast(signaling_nan);
                x[dim + dim / 3] = bytemuck::cast(signaling_nan);
            }
            let gain: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 5) as f32 / 8.0).collect();
            let bias: Vec<f32> = (0..dim).map(|i| (i % 3) as f32 / 4.0 - 0.25).collect();
            for (gain, bias, centered) in [
                (Some(&gain[..]), Some(&bias[..]), true),
                (None, None, true),
                (Some(&gain[..]), None, false),
            ] {
                let layer = Layer {
                    dim,
                    gain,
                    bias,
                    centered,
                    eps: 1e-5,
                    stores: Stores::Cached,
                    prefetch: false,
                };
                let reference = results(None, &x, &dy, layer);
                for &(name, arch) in &sets {
                    for stores in store_choices() {
                        let layer = Layer { stores, ..layer };
                        assert!(
                            results(Some(arch), &x, &dy, layer) == reference,
                            "{name} {stores:?}: dim {dim} centered {centered}"
                        );
                    }
                }
            }
        }
    }

    /// `dx` alone (no parameter gradients) on `arch`.
    fn dx_on<E: Storage>(arch: pulp::Arch, rows: BackwardRows<'_, E>, dx: &mut [E]) {
        arch.dispatch(Backward {
            rows,
            dx,
            dsum: None,
            totals: GradSums {
                gain: None,
                bias: None,
            },
            group_rows: usize::MAX,
            scratch: &mut Vec::new(),
        });
    }

    /// `y`, the means and the inverse standard deviations of the forward pass on `arch`.
    fn forward_on<H: HalfElement + Storage<Wide = f32>>(
        arch: pulp::Arch,
        layer: Layer<'_, H>,
        x: &[H],
    ) -> (Vec<H>, Vec<f32>, Vec<f32>) {
        let rows = x.len() / layer.dim;
        let mut y = vec![H::narrow_one(0.0); x.len()];
        let (mut means, mut inv_stds) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        arch.dispatch(ForwardRows {
            layer,
            x: Some(x),
            out: &mut y,
            stats: Some(RowStatsOut {
                mean: &mut means,
                inv_std: &mut inv_stds,
            }),
        });
        (y, means, inv_stds)
    }

    /// NaNs in `y` and `dx` keep their bits: one carried from a gain or bias NaN with payload
    /// in its lower bits (which bf16's shorter rounding, `Storage::store_plain_nans`, would
    /// round into its upper ones, so such a layer runs the general loops), and those the
    /// arithmetic makes from an infinite gain (on `x̂ = 0` in the forward; in the backward's
    /// sums). Compared with the f32 kernels' results on the same instruction set, rounded lane
    /// by lane; each case has one source of NaN, so the f32 results' NaN bits are determined.
    fn check_nan_bits<H: HalfElement + Storage<Wide = f32>>() {
        let payload = f32::from_bits(0x7FC0_FFFF);
        let bits =
            |values: &[H]| -> Vec<u16> { values.iter().map(|&v| bytemuck::cast(v)).collect() };
        let rounded = |values: &[f32]| -> Vec<u16> {
            values
                .iter()
                .map(|&v| bytemuck::cast(H::narrow_one(v)))
                .collect()
        };
        for dim in [64, 1000] {
            // Pairs of lanes ±v (lanes 4 and 5 both 0): the mean is exactly 0, so x̂ is 0 in
            // lane 5, where the gain may be infinite.
            let x_row: Vec<f32> = (0..dim)
                .map(|i| match i {
                    4 | 5 => 0.0,
                    _ => (1 + (i / 2) % 9) as f32 * if i % 2 == 0 { 0.5 } else { -0.5 },
                })
                .collect();
            let rows = 4;
            let x_wide: Vec<f32> = x_row.iter().cycle().take(rows * dim).copied().collect();
            let dy_wide: Vec<f32> = (0..rows * dim).map(|i| (1 + i % 3) as f32 / 4.0).collect();
            let x: Vec<H> = x_wide.iter().map(|&v| H::narrow_one(v)).collect();
            let dy: Vec<H> = dy_wide.iter().map(|&v| H::narrow_one(v)).collect();
            assert!(x.iter().zip(&x_wide).all(|(h, &w)| h.widen_one() == w));
            assert!(dy.iter().zip(&dy_wide).all(|(h, &w)| h.widen_one() == w));
            // (infinite gain in lane 5, gain NaN in lane 3, bias NaN in lane 7)
            for (infinite, gain_nan, bias_nan) in [
                (true, false, false),
                (false, true, false),
                (true, false, true),
            ] {
                let mut gain = vec![1.25f32; dim];
                let mut bias = vec![0.5f32; dim];
                if infinite {
                    gain[5] = f32::INFINITY;
                }
                if gain_nan {
                    gain[3] = payload;
                }
                if bias_nan {
                    bias[7] = payload;
                }
                for &(name, arch) in &instruction_sets() {
                    for stores in store_choices() {
                        let case =
                            format!("{name} {stores:?} dim {dim} {infinite} {gain_nan} {bias_nan}");
                        let layer = Layer {
                            dim,
                            gain: Some(&gain[..]),
                            bias: Some(&bias[..]),
                            centered: true,
                            eps: 1e-5,
                            stores,
                            prefetch: false,
                        };
                        let (y, means, inv_stds) = forward_on(arch, layer, &x);
                        let mut y_wide = vec![0.0f32; x.len()];
                        arch.dispatch(ForwardRows {
                            layer: H::wide_layer(layer),
                            x: Some(&x_wide),
                            out: &mut y_wide,
                            stats: None,
                        });
                        assert_eq!(bits(&y), rounded(&y_wide), "forward {case}");
                        assert_eq!(y_wide[5].is_nan(), infinite, "{case}");
                        if gain_nan {
                            assert_eq!(bits(&y[3..4]), bits(&[H::narrow_one(payload)]), "{case}");
                        }
                        let mut dx = vec![H::narrow_one(0.0); x.len()];
                        let rows_in = BackwardRows {
                            layer,
                            x: &x,
                            dy: &dy,
                            means: &means,
                            inv_stds: &inv_stds,
                        };
                        dx_on(arch, rows_in, &mut dx);
                        let wide_stats = |values: &[f32]| -> Vec<f64> {
                            values.iter().map(|&v| f64::from(v)).collect()
                        };
                        let (wide_means, wide_inv_stds) =
                            (wide_stats(&means), wide_stats(&inv_stds));
                        let mut dx_wide = vec![0.0f32; x.len()];
                        let rows_wide = BackwardRows {
                            layer: H::wide_layer(layer),
                            x: &x_wide,
                            dy: &dy_wide,
                            means: &wide_means,
                            inv_stds: &wide_inv_stds,
                        };
                        dx_on(arch, rows_wide, &mut dx_wide);
                        assert_eq!(bits(&dx), rounded(&dx_wide), "backward {case}");
                        assert_eq!(dx_wide[0].is_nan(), infinite || gain_nan, "{case}");
                        if gain_nan {
                            assert_eq!(bits(&dx[..1]), bits(&[H::narrow_one(payload)]), "{case}");
                        }
                    }
                }
            }
        }
    }

    /// `kernels_fit_a_small_thread_stack` for a half type: every kernel `results` runs.
    pub(super) fn run_small_stack<H: HalfElement + Storage<Wide = f32>>() {
        let dim = 1000;
        let x: Vec<H> = (0..4 * dim)
            .map(|i| H::narrow_one(((i * 37) % 101) as f32 / 16.0 - 3.0))
            .collect();
        let dy: Vec<H> = (0..4 * dim)
            .map(|i| H::narrow_one((i % 7) as f32 - 3.0))
            .collect();
        let gain: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 5) as f32 / 8.0).collect();
        let bias: Vec<f32> = (0..dim).map(|i| (i % 3) as f32 / 4.0 - 0.25).collect();
        for &(_, arch) in &instruction_sets() {
            for stores in store_choices() {
                let layer = Layer {
                    dim,
                    gain: Some(&gain[..]),
                    bias: Some(&bias[..]),
                    centered: true,
                    eps: 1e-5,
                    stores,
                    prefetch: false,
                };
                let results = results(Some(arch), &x, &dy, layer);
                assert!(results[0].iter().all(|&bits| bits != u64::MAX));
            }
        }
    }

    /// Rows whose `x` holds a quiet NaN and a signaling one with another payload, in either
    /// order: their `y` and statistics (forward out of place and in place) are the scalar
    /// path's to the bit on every instruction set, NaN payloads included. The forward loads
    /// `x` without making a signaling NaN quiet where that is shorter (bf16 on aarch64,
    /// `Storage::load_unquieted`), which changes which payload a sum of two NaNs carries
    /// there; that is exact only because such rows go to the scalar specification, which
    /// reads them again.
    fn check_signaling_nans_in_x<H: HalfElement + Storage<Wide = f32>>(quiet: u16, signaling: u16) {
        let bits =
            |values: &[H]| -> Vec<u16> { values.iter().map(|&v| bytemuck::cast(v)).collect() };
        let stat_bits =
            |values: &[f32]| -> Vec<u32> { values.iter().map(|v| v.to_bits()).collect() };
        for dim in [64, 1000] {
            let rows = 4;
            let mut x: Vec<H> = (0..rows * dim)
                .map(|i| H::narrow_one((i % 13) as f32 / 4.0 - 1.5))
                .collect();
            // Row 1: quiet, then signaling; row 2: signaling, then quiet (across vectors).
            x[dim + 3] = bytemuck::cast(quiet);
            x[2 * dim - 2] = bytemuck::cast(signaling);
            x[2 * dim + 1] = bytemuck::cast(signaling);
            x[2 * dim + 9] = bytemuck::cast(quiet);
            let gain: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 5) as f32 / 8.0).collect();
            let bias: Vec<f32> = (0..dim).map(|i| (i % 3) as f32 / 4.0 - 0.25).collect();
            let run = |arch: pulp::Arch, layer: Layer<'_, H>| {
                let (y, means, inv_stds) = forward_on(arch, layer, &x);
                let mut in_place = x.clone();
                arch.dispatch(ForwardRows {
                    layer,
                    x: None,
                    out: &mut in_place,
                    stats: None,
                });
                (
                    bits(&y),
                    stat_bits(&means),
                    stat_bits(&inv_stds),
                    bits(&in_place),
                )
            };
            for centered in [true, false] {
                let layer = Layer {
                    dim,
                    gain: Some(&gain[..]),
                    bias: Some(&bias[..]),
                    centered,
                    eps: 1e-5,
                    stores: Stores::Cached,
                    prefetch: false,
                };
                let reference = run(pulp::Arch::Scalar, layer);
                // Both NaN rows are NaN throughout.
                let is_nan = |&b: &u16| bytemuck::cast::<u16, H>(b).widen_one().is_nan();
                assert!(reference.0[dim..3 * dim].iter().all(is_nan));
                for &(name, arch) in &instruction_sets() {
                    for stores in store_choices() {
                        let layer = Layer { stores, ..layer };
                        assert!(
                            run(arch, layer) == reference,
                            "{name} {stores:?}: dim {dim} centered {centered}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn forward_rows_with_signaling_nans_keep_the_scalar_bits() {
        check_signaling_nans_in_x::<half::bf16>(0x7FC5, 0x7F83);
        check_signaling_nans_in_x::<half::f16>(0x7E05, 0x7C03);
    }

    #[test]
    fn nan_bits_in_half_outputs_are_kept() {
        check_nan_bits::<half::f16>();
        check_nan_bits::<half::bf16>();
    }

    #[test]
    fn f16_rows_give_the_f32_kernels_results_rounded_once_on_every_instruction_set() {
        check::<half::f16>(0x7C01);
    }

    #[test]
    fn bf16_rows_give_the_f32_kernels_results_rounded_once_on_every_instruction_set() {
        check::<half::bf16>(0x7F81);
    }
}
