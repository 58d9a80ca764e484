//! The paper's figures as SVG (plotters): QoE CDF (Fig. 5), QoE per run (Fig. 7), QoE and latency
//! against k (Fig. 8), QoE against load (Fig. 10).

use super::Results;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// What drawing on an SVG file fails with (the SVG backend's error is an I/O error).
type DrawingError = DrawingAreaErrorKind<std::io::Error>;

/// Why a figure could not be drawn or written; each names the SVG file and, when drawing a
/// chart failed, its title.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The SVG file could not be filled or written.
    #[error("{}: {source}", path.display())]
    Svg {
        path: PathBuf,
        #[source]
        source: DrawingError,
    },
    /// A chart's axes, series or legend could not be drawn.
    #[error("{}: {title}: {source:?}", path.display())]
    Chart {
        path: PathBuf,
        title: String,
        #[source]
        source: DrawingError,
    },
}

impl PlotError {
    fn svg(path: &Path) -> impl Fn(DrawingError) -> Self + '_ {
        move |source| Self::Svg {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(PlotError::svg(path))?;
    draw(&root, path, title, x_label, y_label, series)?;
    root.present().map_err(PlotError::svg(path))
}

fn bounds(series: &[Series<'_>]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-9);
    (x0, x1.max(x0 + 1e-9), y0 - pad, y1 + pad)
}

/// One chart on `area`, a part of the SVG file `path`.
fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<(), PlotError> {
    let err = |source| PlotError::Chart {
        path: path.to_path_buf(),
        title: title.to_string(),
        source,
    };
    let (x0, x1, y0, y1) = bounds(series);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    for (name, pts, color) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

const DEFAULT: RGBColor = RGBColor(120, 120, 120);
const GREEDY: RGBColor = RGBColor(230, 140, 20);
const HYDRUS: RGBColor = RGBColor(30, 90, 200);

fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let n = v.len().max(1) as f64;
    v.iter()
        .enumerate()
        .map(|(i, &q)| (q, (i + 1) as f64 / n))
        .collect()
}

/// Figures 5, 7, 8 and 10 as SVG files in `dir`.
pub fn all(r: &Results, dir: &Path) -> Result<(), PlotError> {
    lines(
        &dir.join("fig5_cdf.svg"),
        "Per-user QoE, CDF (Fig. 5)",
        "QoE",
        "fraction of users",
        &[
            ("default", cdf(&r.cdf_default), DEFAULT),
            ("greedy", cdf(&r.cdf_greedy), GREEDY),
            ("Hydrus", cdf(&r.cdf_hydrus), HYDRUS),
        ],
    )?;
    let run = |f: fn(&super::RunPoint) -> f64| -> Vec<(f64, f64)> {
        r.runs.iter().map(|p| (p.run as f64, f(p))).collect()
    };
    lines(
        &dir.join("fig7_runs.svg"),
        "Mean QoE per experiment (Fig. 7)",
        "experiment",
        "mean QoE",
        &[
            ("default", run(|p| p.default_qoe), DEFAULT),
            ("greedy", run(|p| p.greedy_qoe), GREEDY),
            ("Hydrus", run(|p| p.hydrus_qoe), HYDRUS),
        ],
    )?;
    k_sweep(r, &dir.join("fig8_k_sweep.svg"))?;
    lines(
        &dir.join("fig10_load.svg"),
        "Mean QoE against load, fixed latency limit (Fig. 10)",
        "requests",
        "mean QoE",
        &[
            (
                "default",
                r.load
                    .iter()
                    .map(|p| (p.load as f64, p.default_qoe))
                    .collect(),
                DEFAULT,
            ),
            (
                "Hydrus",
                r.load
                    .iter()
                    .map(|p| (p.load as f64, p.hydrus_qoe))
                    .collect(),
                HYDRUS,
            ),
        ],
    )?;
    Ok(())
}

/// Figure 8, two charts side by side: mean QoE and mean latency against k.
fn k_sweep(r: &Results, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(PlotError::svg(path))?;
    let (left, right) = root.split_horizontally(500);
    let default_q = r.equal_cost.first().map_or(0.0, |p| p.mean_qoe);
    let default_l = r.equal_cost.first().map_or(0.0, |p| p.mean_latency_ms);
    let ks: Vec<f64> = r.k_sweep.iter().map(|p| p.k * 1e3).collect();
    let flat = |v: f64| ks.iter().map(|&k| (k, v)).collect::<Vec<_>>();
    draw(
        &left,
        path,
        "Mean QoE against k (Fig. 8)",
        "k (x 1e-3)",
        "mean QoE",
        &[
            (
                "Hydrus",
                r.k_sweep.iter().map(|p| (p.k * 1e3, p.mean_qoe)).collect(),
                HYDRUS,
            ),
            ("default", flat(default_q), DEFAULT),
        ],
    )?;
    draw(
        &right,
        path,
        "Mean latency against k",
        "k (x 1e-3)",
        "mean latency (ms)",
        &[
            (
                "Hydrus",
                r.k_sweep
                    .iter()
                    .map(|p| (p.k * 1e3, p.mean_latency_ms))
                    .collect(),
                HYDRUS,
            ),
            ("default", flat(default_l), DEFAULT),
        ],
    )?;
    root.present().map_err(PlotError::svg(path))
}

/// Kwiken's Figure 11: latency reduction against the reissue budget.
pub fn hedge(r: &super::hedge::HedgeResults, dir: &Path) -> Result<(), PlotError> {
    let line = |f: fn(&super::hedge::HedgePoint) -> f64| -> Vec<(f64, f64)> {
        r.points
            .iter()
            .map(|p| (p.budget * 100.0, f(p) * 100.0))
            .collect()
    };
    lines(
        &dir.join("fig_hedge.svg"),
        "Latency reduction against the reissue budget (Kwiken Fig. 11)",
        "reissue budget (% extra requests)",
        "reduction (%)",
        &[
            ("p99", line(|p| p.p99_reduction), HYDRUS),
            ("p90", line(|p| p.p90_reduction), GREEDY),
            ("p50", line(|p| p.p50_reduction), DEFAULT),
        ],
    )
}

/// `--shift`: spend per second against the cap over the day, and QoE against the optimum.
pub fn shift(r: &super::shift::ShiftResults, dir: &Path) -> Result<(), PlotError> {
    let hour = |m: usize| m as f64 / 60.0;
    let minute = |f: fn(&super::shift::Minute) -> f64| -> Vec<(f64, f64)> {
        r.minutes.iter().map(|p| (hour(p.minute), f(p))).collect()
    };
    let cap = vec![(0.0, r.cap_per_second), (24.0, r.cap_per_second)];
    lines(
        &dir.join("fig_shift_spend.svg"),
        "Spend on a shifted day (minute means)",
        "hour of the day (UTC)",
        "cost per second",
        &[
            ("open loop", minute(|p| p.open), DEFAULT),
            ("closed loop", minute(|p| p.closed), HYDRUS),
            ("planned", minute(|p| p.expected), GREEDY),
            ("cap", cap, RGBColor(200, 30, 30)),
        ],
    )?;
    let window = |f: fn(&super::shift::WindowRow) -> f64| -> Vec<(f64, f64)> {
        r.windows
            .iter()
            .map(|w| (w.window as f64 + 0.5, f(w)))
            .collect()
    };
    lines(
        &dir.join("fig_shift_qoe.svg"),
        "QoE over the LP optimum at the same spend, per hour",
        "hour of the day (UTC)",
        "QoE / optimum",
        &[
            ("open loop", window(|w| w.open_over_optimum), DEFAULT),
            ("closed loop", window(|w| w.closed_over_optimum), HYDRUS),
        ],
    )
}
