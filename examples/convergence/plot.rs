//! The convergence plot: validation loss against training step, both models, every seed.

use plotters::prelude::*;
use std::path::Path;

/// One training run's validation curve.
pub struct Curve {
    pub label: String,
    pub layer_norm: bool,
    pub points: Vec<(usize, f64)>,
}

/// Writes an SVG of the curves (log-scale loss) to `path`, with a dashed line at `target`.
pub fn write_svg(
    path: &Path,
    title: &str,
    curves: &[Curve],
    target: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_step = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    let (low, high) = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (low, high) = (low.min(target) * 0.8, high.max(target) * 1.25);

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0..max_step, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("validation MSE (log scale)")
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(230, 120, 20);
    let mut labelled = [false, false];
    for curve in curves {
        let color = if curve.layer_norm { blue } else { orange };
        let series = chart.draw_series(LineSeries::new(
            curve.points.iter().copied(),
            color.stroke_width(2),
        ))?;
        let index = usize::from(curve.layer_norm);
        if !labelled[index] {
            labelled[index] = true;
            series.label(curve.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    chart.draw_series(DashedLineSeries::new(
        [(0, target), (max_step, target)],
        6,
        4,
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
