//! The training curves as a PNG: the loss of every step (light) and each epoch's mean
//! (dark) on a log axis, and the validation CPM by epoch below it.

use super::run::Record;
use crate::error::Result;
use crate::render::{text_width, RgbImage, BLACK, GLYPH_HEIGHT, GRID, WHITE};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 640;
const STEP: [u8; 3] = [160, 190, 230];
const EPOCH: [u8; 3] = [31, 90, 170];
const CPM: [u8; 3] = [214, 39, 40];

/// A plot panel: its pixel box and data ranges.
struct Panel {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    xmax: f64,
    ymin: f64,
    ymax: f64,
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * (x / self.xmax.max(1e-12)).clamp(0.0, 1.0)
    }

    fn py(&self, y: f64) -> f64 {
        let t = ((y - self.ymin) / (self.ymax - self.ymin)).clamp(0.0, 1.0);
        self.y1 - (self.y1 - self.y0) * t
    }

    fn frame(&self, img: &mut RgbImage, title: &str, x_label: &str) {
        let (x0, x1, y0, y1) = (
            self.x0 as i64,
            self.x1 as i64,
            self.y0 as i64,
            self.y1 as i64,
        );
        img.line(self.x0, self.y1, self.x1, self.y1, 1.0, BLACK);
        img.line(self.x0, self.y0, self.x0, self.y1, 1.0, BLACK);
        img.text(x0, y0 - GLYPH_HEIGHT * 2 - 6, title, 2, false, BLACK);
        let w = text_width(x_label, 2);
        img.text((x0 + x1 - w) / 2, y1 + 26, x_label, 2, false, BLACK);
        // x ticks: about six, at round numbers.
        let step = nice_step(self.xmax / 6.0);
        let mut t = 0.0;
        while t <= self.xmax + 1e-9 {
            let x = self.px(t);
            img.line(x, self.y1, x, self.y1 + 4.0, 1.0, BLACK);
            let label = format!("{}", t as u64);
            let w = text_width(&label, 2);
            img.text(x as i64 - w / 2, y1 + 8, &label, 2, false, BLACK);
            t += step;
        }
    }

    fn y_tick(&self, img: &mut RgbImage, y: f64, label: &str) {
        let py = self.py(y);
        img.line(self.x0, py, self.x1, py, 1.0, GRID);
        img.line(self.x0 - 4.0, py, self.x0, py, 1.0, BLACK);
        let w = text_width(label, 2);
        img.text(
            self.x0 as i64 - 8 - w,
            py as i64 - GLYPH_HEIGHT,
            label,
            2,
            false,
            BLACK,
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let p = 10f64.powf(x.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * p)
}

/// Draws the curves of a run's metrics records.
pub fn plot_curves(records: &[Record]) -> Result<RgbImage> {
    let mut img = RgbImage::new(WIDTH, HEIGHT, WHITE);
    let steps: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) if s.loss.total > 0.0 => Some((s.step as f64, s.loss.total)),
            _ => None,
        })
        .collect();
    // Epoch means sit at the epoch's last step.
    let mut last_step = 0.0;
    let mut epochs = Vec::new();
    let mut cpms = Vec::new();
    for r in records {
        match r {
            Record::Step(s) => last_step = s.step as f64,
            Record::Epoch(e) => {
                if e.loss.total > 0.0 {
                    epochs.push((last_step, e.loss.total));
                }
                if let Some(c) = e.validation.as_ref().and_then(|v| v.cpm) {
                    cpms.push((e.epoch as f64, c));
                }
            }
        }
    }
    let max_step = steps.iter().map(|s| s.0).fold(1.0, f64::max);
    let (lo, hi) = steps.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
        (lo.min(s.1.log10()), hi.max(s.1.log10()))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-2.0, 1.0)
    };
    let loss = Panel {
        x0: 90.0,
        x1: WIDTH as f64 - 30.0,
        y0: 50.0,
        y1: 300.0,
        xmax: max_step,
        ymin: lo,
        ymax: hi,
    };
    for d in lo as i64..=hi as i64 {
        loss.y_tick(&mut img, d as f64, &format!("1e{d}"));
    }
    loss.frame(&mut img, "loss (steps light, epoch means dark)", "step");
    for w in steps.windows(2) {
        let (a, b) = (w[0], w[1]);
        img.line(
            loss.px(a.0),
            loss.py(a.1.log10()),
            loss.px(b.0),
            loss.py(b.1.log10()),
            1.0,
            STEP,
        );
    }
    for w in epochs.windows(2) {
        img.line(
            loss.px(w[0].0),
            loss.py(w[0].1.log10()),
            loss.px(w[1].0),
            loss.py(w[1].1.log10()),
            2.5,
            EPOCH,
        );
    }
    for e in &epochs {
        img.disc(loss.px(e.0), loss.py(e.1.log10()), 3.5, EPOCH);
    }

    let max_epoch = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch(e) => Some(e.epoch as f64),
            _ => None,
        })
        .fold(1.0, f64::max);
    let cpm = Panel {
        x0: 90.0,
        x1: WIDTH as f64 - 30.0,
        y0: 390.0,
        y1: HEIGHT as f64 - 60.0,
        xmax: max_epoch,
        ymin: 0.0,
        ymax: 1.0,
    };
    for k in 0..=4 {
        let y = k as f64 / 4.0;
        cpm.y_tick(&mut img, y, &format!("{y:.2}"));
    }
    let title = match cpms.iter().cloned().fold(None, |b: Option<(f64, f64)>, c| {
        if b.is_none_or(|b| c.1 > b.1) {
            Some(c)
        } else {
            b
        }
    }) {
        Some((e, c)) => format!("validation CPM (best {c:.3} at epoch {e})"),
        None => "validation CPM (none yet)".to_string(),
    };
    cpm.frame(&mut img, &title, "epoch");
    for w in cpms.windows(2) {
        img.line(
            cpm.px(w[0].0),
            cpm.py(w[0].1),
            cpm.px(w[1].0),
            cpm.py(w[1].1),
            2.0,
            CPM,
        );
    }
    for c in &cpms {
        img.disc(cpm.px(c.0), cpm.py(c.1), 4.0, CPM);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::LossParts;
    use crate::train::run::{EpochRecord, StepRecord, Validation};

    #[test]
    fn curves_draw_the_loss_and_cpm_where_they_are() {
        let mut records = Vec::new();
        for step in 1..=20 {
            records.push(Record::Step(StepRecord {
                epoch: (step - 1) / 10 + 1,
                step,
                lr: 1e-3,
                loss: LossParts {
                    total: 2.0 / step as f64,
                    ..LossParts::default()
                },
                patches: 4,
                step_s: 1.0,
                data_wait_s: 0.0,
            }));
            if step % 10 == 0 {
                records.push(Record::Epoch(EpochRecord {
                    epoch: step / 10,
                    steps: 10,
                    loss: LossParts {
                        total: 2.0 / step as f64,
                        ..LossParts::default()
                    },
                    patches_per_s: 4.0,
                    data_wait_s: 0.0,
                    seconds: 10.0,
                    validation: Some(Validation {
                        cpm: Some(0.25 * (step / 10) as f64),
                        sensitivities: [0.0; 7],
                        nodules: 4,
                        detected: 2,
                        scans: 1,
                        seconds: 1.0,
                    }),
                    best: true,
                }));
            }
        }
        let img = plot_curves(&records).unwrap();
        let count = |rgb: [u8; 3]| {
            img.data
                .chunks(3)
                .filter(|p| p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2])
                .count()
        };
        assert!(count(STEP) > 100, "step curve drawn");
        assert!(count(EPOCH) > 50, "epoch means drawn");
        // The CPM of epoch 2 (0.5) is drawn half-way up the lower panel at its right end.
        let (x, y) = (WIDTH - 30, (390 + HEIGHT - 60) / 2);
        assert_eq!(img.pixel(x, y), Some(CPM));
        // And nothing red in the loss panel.
        assert!((50..300).all(|y| (90..WIDTH - 30).all(|x| img.pixel(x, y) != Some(CPM))));
        // No records: an empty frame, no panic.
        plot_curves(&[]).unwrap();
    }
}
