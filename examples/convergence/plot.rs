//! The convergence plot: validation loss against training step, both models, the median over
//! seeds as a thick line and every seed as a faint one.

use plotters::prelude::*;
use std::path::Path;

/// One model's validation curves, one per seed (all evaluated at the same steps).
pub struct Curves {
    pub label: String,
    pub layer_norm: bool,
    pub seeds: Vec<Vec<(usize, f64)>>,
}

impl Curves {
    /// The median over seeds at each evaluated step.
    fn median(&self) -> Vec<(usize, f64)> {
        let first = self.seeds.first().map_or(&[][..], |s| &s[..]);
        first
            .iter()
            .enumerate()
            .map(|(i, &(step, _))| {
                let mut values: Vec<f64> = self.seeds.iter().map(|s| s[i].1).collect();
                values.sort_by(f64::total_cmp);
                let n = values.len();
                (step, (values[(n - 1) / 2] + values[n / 2]) / 2.0)
            })
            .collect()
    }
}

/// Writes an SVG of the curves (log-scale loss) to `path`, with a dashed line at `target`.
pub fn write_svg(
    path: &Path,
    title: &str,
    curves: &[Curves],
    target: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_step = curves
        .iter()
        .flat_map(|c| c.seeds.iter().flatten().map(|p| p.0))
        .max()
        .unwrap_or(1);
    let (low, high) = curves
        .iter()
        .flat_map(|c| c.seeds.iter().flatten().map(|p| p.1))
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
    for curves in curves {
        let color = if curves.layer_norm { blue } else { orange };
        for seed in &curves.seeds {
            chart.draw_series(LineSeries::new(
                seed.iter().copied(),
                color.mix(0.3).stroke_width(1),
            ))?;
        }
    }
    for curves in curves {
        let color = if curves.layer_norm { blue } else { orange };
        chart
            .draw_series(LineSeries::new(curves.median(), color.stroke_width(3)))?
            .label(format!("{} — median of seeds", curves.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(std::iter::empty::<PathElement<(usize, f64)>>())?
            .label(format!("{} — each seed", curves.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.3).stroke_width(1))
            });
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0, 1.0 / 6.0), (max_step, 1.0 / 6.0)],
            2,
            4,
            BLACK.stroke_width(1),
        ))?
        .label("predicting the mean: 0.167")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
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
