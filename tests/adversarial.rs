//! Adversarial inputs for every public entry point: arbitrary shapes (zero-length axes,
//! one-element rows), layouts (stepped, negative, zero and transposed strides; 4-D permuted
//! views below), eps, and data with
//! NaN, ±Inf, subnormals, ±MAX and mixtures. Every call returns Ok or a NormError (a panic fails
//! the property), never changes another row's result, and gives finite results for finite
//! inputs with eps > 0.

use layernorm::{Element, LayerNorm, NormError, RmsNorm};
use ndarray::{s, Array2, Array3, ArrayView2, ShapeBuilder};
use num_traits::Float;
use proptest::prelude::*;

/// A value from the awkward corners of a float type, or an ordinary number; turned into a
/// value of the element type under test by [`Kind::value`].
#[derive(Debug, Clone, Copy)]
enum Kind {
    Number(f64),
    Nan,
    Infinity,
    NegInfinity,
    Max,
    NegMax,
    Subnormal,
    Zero,
    /// A fraction of the type's square root of its maximum: squares near overflow.
    Huge(f64),
    /// Near 1e4: a large offset.
    Offset(f64),
}

trait Adversarial: Element + Float {
    fn from_f64(value: f64) -> Self;
}

impl Adversarial for f32 {
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Adversarial for f64 {
    fn from_f64(value: f64) -> Self {
        value
    }
}

#[cfg(feature = "half")]
impl Adversarial for half::f16 {
    fn from_f64(value: f64) -> Self {
        half::f16::from_f64(value)
    }
}

#[cfg(feature = "half")]
impl Adversarial for half::bf16 {
    fn from_f64(value: f64) -> Self {
        half::bf16::from_f64(value)
    }
}

impl Kind {
    fn value<T: Adversarial>(self) -> T {
        match self {
            Kind::Number(v) => T::from_f64(v),
            Kind::Nan => T::nan(),
            Kind::Infinity => T::infinity(),
            Kind::NegInfinity => T::neg_infinity(),
            Kind::Max => T::max_value(),
            Kind::NegMax => T::min_value(),
            Kind::Subnormal => T::min_positive_value() / T::from_f64(4.0),
            Kind::Zero => T::zero(),
            Kind::Huge(fraction) => T::max_value().sqrt() * T::from_f64(fraction),
            Kind::Offset(v) => T::from_f64(1e4 + v),
        }
    }
}

fn any_kind() -> impl Strategy<Value = Kind> + Clone {
    prop_oneof![
        4 => (-10.0..10.0f64).prop_map(Kind::Number),
        1 => Just(Kind::Nan),
        1 => Just(Kind::Infinity),
        1 => Just(Kind::NegInfinity),
        1 => Just(Kind::Max),
        1 => Just(Kind::NegMax),
        1 => Just(Kind::Subnormal),
        1 => Just(Kind::Zero),
        1 => (-4.0..4.0f64).prop_map(Kind::Huge),
        1 => (0.0..1.0f64).prop_map(Kind::Offset),
    ]
}

fn finite_kind() -> impl Strategy<Value = Kind> + Clone {
    prop_oneof![
        3 => (-10.0..10.0f64).prop_map(Kind::Number),
        1 => Just(Kind::Max),
        1 => Just(Kind::NegMax),
        1 => Just(Kind::Subnormal),
        1 => (-4.0..4.0f64).prop_map(Kind::Huge),
        1 => (0.0..1.0f64).prop_map(Kind::Offset),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    dim: usize,
    data: Vec<Kind>,
    eps: f64,
    layout: u8,
}

fn case(values: impl Strategy<Value = Kind> + Clone + 'static) -> impl Strategy<Value = Case> {
    (
        0usize..6,
        1usize..40,
        prop_oneof![Just(0.0), Just(1e-5), 0.0..1.0f64],
        0u8..5,
    )
        .prop_flat_map(move |(rows, dim, eps, layout)| {
            // A square base with room for stepped, reversed and transposed views.
            let side = 2 * rows.max(dim).max(1);
            let len = side * side;
            (
                Just(rows),
                Just(dim),
                prop::collection::vec(values.clone(), len),
                Just(eps),
                Just(layout),
            )
        })
        .prop_map(|(rows, dim, data, eps, layout)| Case {
            rows,
            dim,
            data,
            eps,
            layout,
        })
}

/// The square matrix the case's views are cut from.
fn base_of<T: Adversarial>(case: &Case) -> Array2<T> {
    let side = 2 * case.rows.max(case.dim).max(1);
    let values = case.data.iter().map(|kind| kind.value::<T>()).collect();
    Array2::from_shape_vec((side, side), values).expect("sized")
}

/// The case's (rows, dim) matrix as a view of `base` in one of five layouts.
fn view_of<'a, T>(base: &'a Array2<T>, case: &Case) -> ArrayView2<'a, T> {
    let (rows, dim) = (case.rows, case.dim);
    match case.layout {
        0 => base.slice(s![..rows, ..dim]),
        1 => base.slice(s![..2 * rows;2, ..2 * dim;2]), // stepped
        2 => base.slice(s![..rows;-1, ..dim;-1]),       // negative strides
        3 => base.t().slice_move(s![..rows, ..dim]),    // transposed
        // Zero row stride: every row is the base's first row.
        _ => {
            let first_row = &base.as_slice().expect("standard layout")[..dim];
            ArrayView2::from_shape((rows, dim).strides((0, 1)), first_row).expect("valid view")
        }
    }
}

/// The case's input as an owned standard-layout matrix (same values as its view).
fn input<T: Adversarial>(case: &Case) -> (Array2<T>, u8) {
    let base = base_of::<T>(case);
    (view_of(&base, case).to_owned(), case.layout)
}

/// Runs every entry point of a layer on the case's view and returns the forward output and the
/// input gradient; `Err` names what failed (a NormError where none was expected, or results
/// that differ between entry points).
macro_rules! run_all {
    ($float:ty, $layer:expr, $case:expr) => {
        (|| -> Result<(Array2<$float>, Array2<$float>), String> {
            let layer = $layer;
            let case: &Case = $case;
            let (x, _) = input::<$float>(case);
            let (rows, dim) = (case.rows, case.dim);
            let base = base_of::<$float>(case);
            let view = view_of(&base, case);
            let error = |e: NormError| e.to_string();
            let (y, stats) = layer.forward_with_stats(&view).map_err(error)?;
            let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
            check(
                same(&layer.forward(&x).map_err(error)?, &y),
                "forward != forward_with_stats",
            )?;
            let mut out = Array2::<$float>::zeros((rows, dim));
            layer.forward_into(&view, &mut out).map_err(error)?;
            check(same(&out, &y), "forward_into differs")?;
            let mut inplace = x.clone();
            layer.forward_inplace(&mut inplace).map_err(error)?;
            check(same(&inplace, &y), "forward_inplace differs")?;
            let dy = x.mapv(|v: $float| dy_for(v));
            let mut reused = stats.clone();
            layer
                .forward_with_stats_into(&view, &mut out, &mut reused)
                .map_err(error)?;
            check(same(&out, &y), "forward_with_stats_into differs")?;
            let grads = layer.backward(&view, &stats, &dy).map_err(error)?;
            let mut dx = Array2::<$float>::zeros((rows, dim));
            let mut gain_grad = ndarray::Array1::<$float>::zeros(dim);
            layer
                .backward_into(&view, &stats, &dy, &mut dx, Some(&mut gain_grad), None)
                .map_err(error)?;
            check(same(&dx, &grads.input), "backward_into differs")?;
            let step = layer.forward_residual(&view, &x).map_err(error)?;
            let mut sum = Array2::<$float>::zeros((rows, dim));
            let mut residual_stats = step.stats.clone();
            layer
                .forward_residual_into(&view, &x, &mut out, &mut sum, &mut residual_stats)
                .map_err(error)?;
            check(
                same(&out, &step.output) && same(&sum, &step.sum),
                "forward_residual_into differs",
            )?;
            layer
                .backward_residual(&step.sum, &step.stats, &dy, &dy)
                .map_err(error)?;
            let wrong = Array2::<$float>::zeros((rows + 1, dim));
            let mismatch = layer.backward(&view, &stats, &wrong);
            check(
                matches!(mismatch, Err(NormError::ShapeMismatch { .. })),
                "mismatch accepted",
            )?;
            Ok((y, grads.input))
        })()
    };
}

/// An upstream gradient for `x`: small and finite whatever x is.
fn dy_for<T: Adversarial>(x: T) -> T {
    let step = T::from_f64(0.001);
    if x.is_finite() {
        (x * step).max(T::from_f64(-1.0)).min(T::from_f64(1.0))
    } else {
        T::from_f64(0.5)
    }
}

/// Equal element by element, NaN matching NaN.
fn same<T: Float>(a: &Array2<T>, b: &Array2<T>) -> bool {
    a.iter()
        .zip(b)
        .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()))
}

macro_rules! check_layers {
    ($float:ty, $case:expr, $finite:expr) => {{
        let case: &Case = $case;
        let dim = case.dim;
        let ln = LayerNorm::<$float>::new(dim)
            .and_then(|l| l.with_eps(case.eps))
            .expect("valid");
        let rms = RmsNorm::<$float>::new(dim)
            .and_then(|l| l.with_eps(case.eps))
            .expect("valid");
        let results = [
            run_all!($float, &ln, case)
                .map_err(|e| TestCaseError::fail(format!("LayerNorm: {e}")))?,
            run_all!($float, &rms, case)
                .map_err(|e| TestCaseError::fail(format!("RmsNorm: {e}")))?,
        ];
        check_results(case, $finite, &ln, &results)
    }};
}

fn check_results<T: Adversarial>(
    case: &Case,
    finite: bool,
    ln: &LayerNorm<T>,
    results: &[(Array2<T>, Array2<T>); 2],
) -> Result<(), TestCaseError> {
    let (x, _) = input::<T>(case);
    for (which, (y, dx)) in results.iter().enumerate() {
        for row in 0..case.rows {
            let row_finite = x.row(row).iter().all(|v| v.is_finite());
            if finite && case.eps > 0.0 && row_finite {
                prop_assert!(
                    y.row(row).iter().all(|v| v.is_finite()),
                    "layer {which} row {row}: y {}",
                    y.row(row)
                );
                prop_assert!(
                    dx.row(row).iter().all(|v| v.is_finite()),
                    "layer {which} row {row}: dx {}",
                    dx.row(row)
                );
            }
        }
    }
    // Row confinement: the same rows computed alone give the same bits.
    for row in 0..case.rows {
        let single = x.slice(s![row..row + 1, ..]);
        let y_alone = ln
            .forward(&single)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            same(
                &y_alone,
                &results[0].0.slice(s![row..row + 1, ..]).to_owned()
            ),
            "row {row} depends on others"
        );
    }
    Ok(())
}

proptest! {
    // 128 cases each under `cargo test` (debug builds are slow); soak runs raise it with
    // PROPTEST_CASES, e.g. `PROPTEST_CASES=20000 cargo test --release --test adversarial`.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_call_on_any_data_is_ok_or_an_error_and_stays_in_its_row(case in case(any_kind())) {
        check_layers!(f32, &case, false)?;
        check_layers!(f64, &case, false)?;
        #[cfg(feature = "half")]
        {
            check_layers!(half::f16, &case, false)?;
            check_layers!(half::bf16, &case, false)?;
        }
    }

    #[test]
    fn finite_inputs_with_positive_eps_give_finite_results(case in case(finite_kind())) {
        check_layers!(f32, &case, true)?;
        check_layers!(f64, &case, true)?;
        #[cfg(feature = "half")]
        {
            check_layers!(half::f16, &case, true)?;
            check_layers!(half::bf16, &case, true)?;
        }
    }
}

#[test]
fn zero_eps_constant_rows_are_nan_on_every_path_and_thread_count() {
    // The one answer for σ² = 0 with ε = 0: r = +Inf and x̂ = 0 · Inf = NaN, for y and dx.
    for dim in [1, 7, 64, 300, 1000] {
        let x = Array3::<f32>::from_elem((70, 2, dim), 3.5);
        let ln = LayerNorm::<f32>::new(dim)
            .expect("valid")
            .with_eps(0.0)
            .expect("valid");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let (y, stats) = pool.install(|| ln.forward_with_stats(&x)).expect("valid");
            assert!(y.iter().all(|v| v.is_nan()), "dim {dim}, {threads} threads");
            assert!(stats.inv_std().iter().all(|r| *r == f64::INFINITY));
            let dx = pool
                .install(|| ln.backward(&x, &stats, &x))
                .expect("valid")
                .input;
            assert!(
                dx.iter().all(|v| v.is_nan()),
                "dim {dim}, {threads} threads: dx"
            );
            let mut lanes = x.clone();
            ln.forward_inplace(&mut lanes.view_mut().permuted_axes([1, 0, 2]))
                .expect("valid");
            assert!(lanes.iter().all(|v| v.is_nan()));
        }
    }
}

#[test]
fn rows_mixing_max_and_zero_stay_finite_in_short_rows() {
    // Found by the property above: a row shorter than one vector, whose values are summed in
    // f64 but whose deviations were formed in f32, overflowed to Inf in the output.
    let row = [-f32::MAX, 0.0, -f32::MAX, 0.0, 0.0, 0.0, f32::MAX];
    for dim in [7, 9, 17, 33] {
        let mut x = vec![0.0f32; dim];
        x[..7].copy_from_slice(&row);
        let x = Array2::from_shape_vec((1, dim), x).expect("sized");
        {
            let ln = LayerNorm::<f32>::new(dim).expect("valid");
            let (y, stats) = ln.forward_with_stats(&x).expect("valid");
            assert!(y.iter().all(|v| v.is_finite()), "dim {dim}: {y}");
            let dx = ln
                .backward(&x, &stats, &x.mapv(|_| 1.0))
                .expect("valid")
                .input;
            assert!(dx.iter().all(|v| v.is_finite()), "dim {dim}: {dx}");
        }
        let y = RmsNorm::<f32>::new(dim)
            .expect("valid")
            .forward(&x)
            .expect("valid");
        assert!(y.iter().all(|v| v.is_finite()), "RmsNorm dim {dim}: {y}");
    }
}

#[test]
fn non_standard_four_dimensional_views_match_their_copies() {
    let x = ndarray::Array4::<f32>::from_shape_fn((3, 4, 5, 6), |(a, b, c, d)| {
        ((a * 7 + b * 5 + c * 3 + d) % 13) as f32 - 6.0
    });
    let ln = LayerNorm::<f32>::new(4).expect("valid");
    // Last axis of length 4 taken from axis 1: every axis strided differently, none standard.
    let view = x.view().permuted_axes([2, 0, 3, 1]);
    let (y, stats) = ln.forward_with_stats(&view).expect("valid");
    let (y_copy, stats_copy) = ln.forward_with_stats(&view.to_owned()).expect("valid");
    assert_eq!((y, &stats), (y_copy, &stats_copy));
    let dy = view.mapv(|v| v * 0.25);
    let grads = ln.backward(&view, &stats, &dy).expect("valid");
    let grads_copy = ln
        .backward(&view.to_owned(), &stats_copy, &dy)
        .expect("valid");
    assert_eq!(grads, grads_copy);
    let mut target = x.clone();
    let mut target_view = target.view_mut().permuted_axes([2, 0, 3, 1]);
    ln.forward_inplace(&mut target_view).expect("valid");
    assert_eq!(target_view, ln.forward(&view).expect("valid"));
}
