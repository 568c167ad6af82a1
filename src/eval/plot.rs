//! The FROC plot as a PNG, drawn into an RGB buffer by hand (only the `png` crate encodes
//! it): the curve and its bootstrap band on a log2 false-positive axis from 1/8 to 8, grid,
//! axes with tick marks and labels (a small embedded 5x7 bitmap font), and the seven
//! operating points.

use super::{froc, FrocResult, OPERATING_POINTS};
use crate::error::{Error, Result};
pub use crate::render::RgbImage;
use crate::render::{text_width, BLACK, GLYPH_HEIGHT, GRID, WHITE};
use std::path::Path;

/// How to draw the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOptions {
    /// Image width in pixels (200 to 8000; default 800).
    pub width: u32,
    /// Image height in pixels (150 to 8000; default 600).
    pub height: u32,
    /// Lowest sensitivity shown (default 0).
    pub y_min: f64,
    /// Highest sensitivity shown (default 1).
    pub y_max: f64,
    /// Title; `None` writes the CPM and its confidence interval.
    pub title: Option<String>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            width: 800,
            height: 600,
            y_min: 0.0,
            y_max: 1.0,
            title: None,
        }
    }
}

const CURVE: [u8; 3] = [31, 90, 170];
const BAND: [u8; 3] = [31, 119, 180];
const POINT: [u8; 3] = [214, 39, 40];

/// Tick labels of the x axis, as the official plot writes them.
const X_LABELS: [&str; 7] = ["0.125", "0.25", "0.5", "1", "2", "4", "8"];

/// Draws the FROC plot of `result` into an RGB image.
pub fn render_froc(result: &FrocResult, opts: &PlotOptions) -> Result<RgbImage> {
    if !(200..=8000).contains(&opts.width) || !(150..=8000).contains(&opts.height) {
        return Err(Error::InvalidArgument(format!(
            "plot size {}x{} is outside 200x150 to 8000x8000",
            opts.width, opts.height
        )));
    }
    if !(opts.y_min.is_finite() && opts.y_max.is_finite() && opts.y_min < opts.y_max) {
        return Err(Error::InvalidArgument(format!(
            "plot sensitivity range {}..{} is empty or not finite",
            opts.y_min, opts.y_max
        )));
    }
    let (w, h) = (opts.width as i64, opts.height as i64);
    let mut img = RgbImage::new(opts.width, opts.height, WHITE);
    // Text scale: 1 font pixel per 300 pixels of the smaller side, at least 1.
    let t = (w.min(h) / 300).max(1);
    let (left, right, top, bottom) = (42 * t, 14 * t, 18 * t, 32 * t);
    let (x0, x1, y0, y1) = (left, w - 1 - right, top, h - 1 - bottom);
    let (lo2, hi2) = (OPERATING_POINTS[0].log2(), OPERATING_POINTS[6].log2());
    let px = |fp: f64| x0 as f64 + (fp.log2() - lo2) / (hi2 - lo2) * (x1 - x0) as f64;
    let fp_at = |x: i64| (lo2 + (hi2 - lo2) * (x - x0) as f64 / (x1 - x0) as f64).exp2();
    let py = |s: f64| {
        let s = s.clamp(opts.y_min, opts.y_max);
        y1 as f64 - (s - opts.y_min) / (opts.y_max - opts.y_min) * (y1 - y0) as f64
    };

    // Grid.
    let y_ticks: Vec<f64> = (0..=10)
        .map(|k| k as f64 / 10.0)
        .filter(|&v| v >= opts.y_min - 1e-9 && v <= opts.y_max + 1e-9)
        .collect();
    for &fp in &OPERATING_POINTS {
        let x = px(fp).round() as i64;
        img.fill_rect(x, y0, x, y1, GRID, 1.0);
    }
    for &v in &y_ticks {
        let y = py(v).round() as i64;
        img.fill_rect(x0, y, x1, y, GRID, 1.0);
    }

    // Bootstrap band, column by column.
    if let Some(band) = &result.band {
        let (mut prev_lo, mut prev_hi) = (None, None);
        for x in x0..=x1 {
            let fp = fp_at(x);
            let lo = py(froc::interp(fp, &band.fps_per_scan, &band.lower));
            let hi = py(froc::interp(fp, &band.fps_per_scan, &band.upper));
            if lo.is_finite() && hi.is_finite() {
                img.fill_rect(x, hi.round() as i64, x, lo.round() as i64, BAND, 0.22);
                for (prev, y) in [(&mut prev_lo, lo), (&mut prev_hi, hi)] {
                    if let Some(p) = *prev {
                        img.line((x - 1) as f64, p, x as f64, y, 1.0, BAND);
                    }
                    *prev = Some(y);
                }
            }
        }
    }

    // The curve, sampled at every pixel column.
    let line_width = (1.5 * t as f64).max(2.0);
    let mut prev: Option<f64> = None;
    for x in x0..=x1 {
        let y = py(result.curve.sensitivity_at(fp_at(x)));
        if !y.is_finite() {
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            img.line((x - 1) as f64, p, x as f64, y, line_width, CURVE);
        }
        prev = Some(y);
    }

    // Axes box and tick marks.
    img.fill_rect(x0, y0, x1, y0, BLACK, 1.0);
    img.fill_rect(x0, y1, x1, y1, BLACK, 1.0);
    img.fill_rect(x0, y0, x0, y1, BLACK, 1.0);
    img.fill_rect(x1, y0, x1, y1, BLACK, 1.0);
    let tick = 4 * t;
    for (k, &fp) in OPERATING_POINTS.iter().enumerate() {
        let x = px(fp).round() as i64;
        img.fill_rect(x, y1, x, y1 + tick, BLACK, 1.0);
        let label = X_LABELS[k];
        img.text(
            x - text_width(label, t) / 2,
            y1 + tick + 2 * t,
            label,
            t,
            false,
            BLACK,
        );
    }
    for &v in &y_ticks {
        let y = py(v).round() as i64;
        img.fill_rect(x0 - tick, y, x0, y, BLACK, 1.0);
        let label = format!("{v:.1}");
        img.text(
            x0 - tick - 2 * t - text_width(&label, t),
            y - GLYPH_HEIGHT * t / 2,
            &label,
            t,
            false,
            BLACK,
        );
    }

    // Operating points.
    for (&fp, &s) in OPERATING_POINTS.iter().zip(&result.sensitivities) {
        if s.is_finite() {
            let (cx, cy) = (px(fp), py(s));
            img.disc(cx, cy, 3.5 * t as f64, BLACK);
            img.disc(cx, cy, 2.5 * t as f64, POINT);
        }
    }

    // Axis titles and the title.
    let xt = "FALSE POSITIVES PER SCAN";
    img.text(
        (x0 + x1) / 2 - text_width(xt, t) / 2,
        h - 1 - 9 * t,
        xt,
        t,
        false,
        BLACK,
    );
    let yt = "SENSITIVITY";
    img.text(
        3 * t,
        (y0 + y1) / 2 + text_width(yt, t) / 2,
        yt,
        t,
        true,
        BLACK,
    );
    let title = opts.title.clone().unwrap_or_else(|| default_title(result));
    img.text(
        (x0 + x1) / 2 - text_width(&title, t) / 2,
        5 * t,
        &title,
        t,
        false,
        BLACK,
    );
    Ok(img)
}

fn default_title(r: &FrocResult) -> String {
    if r.cpm_ci.0.is_nan() {
        format!("FROC  CPM {:.3}", r.cpm)
    } else {
        format!(
            "FROC  CPM {:.3}  {:.0}% CI {:.3}-{:.3}",
            r.cpm,
            r.config.confidence * 100.0,
            r.cpm_ci.0,
            r.cpm_ci.1
        )
    }
}

/// Draws the FROC plot of `result` and writes it to `path` as an 8-bit RGB PNG.
pub fn plot_froc_png(
    result: &FrocResult,
    path: impl AsRef<Path>,
    opts: &PlotOptions,
) -> Result<()> {
    let path = path.as_ref();
    render_froc(result, opts)?.write_png(path)
}
