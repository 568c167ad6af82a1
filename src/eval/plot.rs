//! The FROC plot as a PNG, drawn into an RGB buffer by hand (only the `png` crate encodes
//! it): the curve and its bootstrap band on a log2 false-positive axis from 1/8 to 8, grid,
//! axes with tick marks and labels (a small embedded 5x7 bitmap font), and the seven
//! operating points.

use super::{froc, FrocResult, OPERATING_POINTS};
use crate::error::{Error, Result};
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

/// An 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    fn new(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        RgbImage {
            width,
            height,
            data,
        }
    }

    /// The colour at `(x, y)`, or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// Blends `rgb` over `(x, y)` with opacity `alpha` (0..=1); outside points are ignored.
    fn blend(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f64) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        for (channel, &target) in self.data[i..i + 3].iter_mut().zip(&rgb) {
            let old = *channel as f64;
            *channel = (old + (target as f64 - old) * alpha)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }

    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        self.blend(x, y, rgb, 1.0);
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, rgb: [u8; 3], alpha: f64) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.blend(x, y, rgb, alpha);
            }
        }
    }

    fn disc(&mut self, cx: f64, cy: f64, r: f64, rgb: [u8; 3]) {
        let (x0, x1) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
        let (y0, y1) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                if dx * dx + dy * dy <= r * r {
                    self.set(x, y, rgb);
                }
            }
        }
    }

    /// A line of the given width from `(x0, y0)` to `(x1, y1)`, stamped as discs.
    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: f64, rgb: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        let r = (width / 2.0).max(0.5);
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            if width <= 1.0 {
                self.set(x.round() as i64, y.round() as i64, rgb);
            } else {
                self.disc(x, y, r, rgb);
            }
        }
    }

    /// Writes `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels;
    /// `vertical` turns it 90 degrees counter-clockwise (reading upwards from `(x, y)`).
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, vertical: bool, rgb: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let advance = k as i64 * GLYPH_ADVANCE * scale;
            for (gy, row) in rows.iter().enumerate() {
                for gx in 0..5i64 {
                    if row & (0b10000 >> gx) == 0 {
                        continue;
                    }
                    let (u, v) = (advance + gx * scale, gy as i64 * scale);
                    for sy in 0..scale {
                        for sx in 0..scale {
                            if vertical {
                                self.set(x + v + sy, y - (u + sx), rgb);
                            } else {
                                self.set(x + u + sx, y + v + sy, rgb);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width of one character cell of the font, in font pixels (5 wide plus 1 of spacing).
const GLYPH_ADVANCE: i64 = 6;
/// Height of the font, in font pixels.
const GLYPH_HEIGHT: i64 = 7;

fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * GLYPH_ADVANCE - 1) * scale
    }
}

/// The 5x7 bitmap of a character: seven rows, bit 4 the leftmost column. Lower-case letters
/// are drawn as capitals; characters without a glyph are blank.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
        'A' => [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
        'B' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
        ],
        'C' => [
            0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
        'D' => [
            0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100,
        ],
        'E' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
        'F' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'G' => [
            0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
        ],
        'H' => [
            0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
        'I' => [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'J' => [
            0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'K' => [
            0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
        ],
        'L' => [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
        'M' => [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
        'N' => [
            0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001,
        ],
        'O' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'P' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'Q' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101,
        ],
        'R' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
        'S' => [
            0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
        'T' => [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
        'U' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'V' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
        'W' => [
            0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
        ],
        'X' => [
            0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001,
        ],
        'Y' => [
            0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100,
        ],
        'Z' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111,
        ],
        '.' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
        ],
        ',' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000,
        ],
        ':' => [
            0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000,
        ],
        '/' => [
            0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000,
        ],
        '-' => [
            0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
        ],
        '=' => [
            0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000,
        ],
        '%' => [
            0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011,
        ],
        '(' => [
            0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010,
        ],
        ')' => [
            0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000,
        ],
        '[' => [
            0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110,
        ],
        ']' => [
            0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110,
        ],
        _ => [0; 7],
    }
}

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
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
    let img = render_froc(result, opts)?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), img.width, img.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let png_error = |e: png::EncodingError| match e {
        png::EncodingError::IoError(io) => Error::io(path, io),
        other => Error::Eval(format!("{}: writing PNG: {other}", path.display())),
    };
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&img.data).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(())
}
