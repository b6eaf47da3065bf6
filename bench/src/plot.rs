//! SVG plots with `plotters` (SVG backend, no font files needed: text is
//! laid out by a size estimate and rendered by the viewer).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::harness::Record;

/// One curve: a label and its points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Latency distribution: x = latency in ms (log), y = quantile.
pub fn latency_cdf(path: &Path, title: &str, records: &[(&str, &Record)]) -> anyhow::Result<bool> {
    let series: Vec<Series> = records
        .iter()
        .filter(|(_, r)| !r.quantiles_ns.is_empty())
        .map(|(label, r)| Series {
            label: (*label).to_string(),
            points: r
                .quantiles_ns
                .iter()
                .map(|&(q, ns)| (ns as f64 / 1e6, q))
                .collect(),
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let (lo, hi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("quantile")
        .max_light_lines(2)
        .draw()
        .map_err(err)?;
    draw(&mut chart, series)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Cost versus size: x = payload KiB (log), y = p50 ms (log).
pub fn cost_vs_size(path: &Path, title: &str, series: Vec<Series>) -> anyhow::Result<bool> {
    let series: Vec<Series> = series
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let (xlo, xhi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (ylo, yhi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("payload (KiB, log scale)")
        .y_desc("p50 latency (ms, log scale)")
        .y_labels(12)
        .max_light_lines(1)
        .draw()
        .map_err(err)?;
    draw(&mut chart, series)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.001, 1.0);
    }
    (lo / 1.5, hi * 1.5)
}

fn draw<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: Vec<Series>,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))
            .map_err(err)?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                s.points
                    .into_iter()
                    .map(|p| Circle::new(p, 2, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}
