//! The plot: test error against epoch, one panel per batch size, one colour per variant, the
//! median over seeds as a solid line and each seed as a faint one.

use crate::mlp::Variant;
use plotters::prelude::*;
use std::path::Path;

/// One variant's curves in one panel: test error after each epoch (epoch 0 = before training).
pub struct Curves {
    pub label: String,
    pub color: RGBColor,
    pub median: Vec<f64>,
    pub seeds: Vec<Vec<f64>>,
}

pub struct Panel {
    pub title: String,
    pub curves: Vec<Curves>,
}

pub fn color(variant: Variant) -> RGBColor {
    match variant {
        Variant::None => RGBColor(127, 127, 127),
        Variant::BatchNorm => RGBColor(230, 120, 20),
        Variant::LayerNorm => RGBColor(31, 119, 180),
    }
}

/// Writes the panels side by side as an SVG, with a dashed line at `target`.
pub fn write_svg(
    path: &Path,
    panels: &[Panel],
    target: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Handwritten digits: test error of an MLP (lower is better)",
        ("sans-serif", 22),
    )?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let epochs = panel
            .curves
            .iter()
            .map(|c| c.median.len().saturating_sub(1))
            .max()
            .unwrap_or(1)
            .max(1);
        // Linear scale up to four times the target, where the variants differ; the first
        // epochs (the untrained network scores about 90%) start above the chart, and any later
        // excursion above it is drawn at its top edge.
        let top = (4.0 * target).min(1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0..epochs, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("test error")
            .y_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
            .draw()?;
        // Each line from the first point on the chart.
        let points = |values: &[f64]| -> Vec<(usize, f64)> {
            let first = values
                .iter()
                .position(|&e| e <= top)
                .unwrap_or(values.len());
            let clipped = values.iter().map(|&e| e.min(top));
            clipped.enumerate().skip(first).collect()
        };
        for curves in &panel.curves {
            let faint = curves.color.mix(0.25);
            for seed in &curves.seeds {
                chart.draw_series(LineSeries::new(points(seed), faint.stroke_width(1)))?;
            }
        }
        for curves in &panel.curves {
            let color = curves.color;
            chart
                .draw_series(LineSeries::new(
                    points(&curves.median),
                    color.stroke_width(3),
                ))?
                .label(format!("{} — median", curves.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(std::iter::empty::<PathElement<(usize, f64)>>())?
                .label(format!("{} — each seed", curves.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.25).stroke_width(1))
                });
        }
        chart
            .draw_series(DashedLineSeries::new(
                [(0, target), (epochs, target)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(format!("target {:.0}%", 100.0 * target))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
