//! A PNG preview of a preprocessed scan: three axial and three coronal slices through the
//! lungs in the preprocessing window, the lung mask's outline in green and the crop in
//! amber, each panel labelled with its world position.
//!
//! Panels are shown in radiological convention when the direction allows: patient right on
//! the image's left, anterior (axial) or superior (coronal) at the top. Pixels are square
//! in millimetres (one pixel per x spacing).

use super::Preprocessed;
use crate::error::Result;
use crate::render::RgbImage;
use std::path::Path;

const OUTLINE: [u8; 3] = [40, 230, 90];
const CROP: [u8; 3] = [255, 176, 0];
const TEXT: [u8; 3] = [255, 255, 255];
const BACKGROUND: [u8; 3] = [24, 24, 24];
const LABEL_H: u32 = 12;
const GAP: u32 = 6;

/// Which plane a panel shows.
#[derive(Clone, Copy, PartialEq)]
enum Plane {
    Axial,
    Coronal,
}

/// A panel: which plane, at which index of its fixed axis.
struct Panel {
    plane: Plane,
    index: usize,
}

/// Draws the preview of `pre`.
pub fn render_preview(pre: &Preprocessed) -> RgbImage {
    let [nz, ny, nx] = pre.shape();
    let sp = pre.geometry().spacing_mm;
    let lb = pre.lung.lung_box;
    let at = |a: usize, f: f64| {
        let (lo, hi) = (
            lb.start[a] as f64,
            lb.end[a].max(lb.start[a] + 1) as f64 - 1.0,
        );
        (lo + (hi - lo) * f).round() as usize
    };
    let panels: Vec<Panel> = [0.25, 0.5, 0.75]
        .iter()
        .map(|&f| Panel {
            plane: Plane::Axial,
            index: at(0, f),
        })
        .chain([0.35, 0.5, 0.65].iter().map(|&f| Panel {
            plane: Plane::Coronal,
            index: at(1, f),
        }))
        .collect();
    let px_mm = sp[2];
    let w = nx as u32;
    let h_axial = ((ny as f64 * sp[1] / px_mm).round() as u32).max(1);
    let h_coronal = ((nz as f64 * sp[0] / px_mm).round() as u32).max(1);
    let width = 3 * w + 4 * GAP;
    let row_h = LABEL_H + h_axial.max(h_coronal) + GAP;
    let height = LABEL_H + GAP + 2 * row_h;
    let mut img = RgbImage::new(width, height, BACKGROUND);
    img.text(
        GAP as i64,
        3,
        &format!(
            "LUNGS {:.0} ML  MASK {:.0} ML  SPACING {} MM",
            pre.lung.lung_volume_ml,
            pre.lung.mask_volume_ml,
            fmt_spacing(sp)
        ),
        1,
        false,
        TEXT,
    );
    // Display orientation from the direction: flip x so patient right is on the left,
    // y so anterior is up, z so superior is up.
    let d = pre.geometry().direction;
    let flip_x = d[2][0] < 0.0;
    let flip_y = d[1][1] < 0.0;
    let flip_z = d[0][2] > 0.0;
    for (k, panel) in panels.iter().enumerate() {
        let col = (k % 3) as u32;
        let row = (k / 3) as u32;
        let x0 = GAP + col * (w + GAP);
        let y0 = LABEL_H + GAP + LABEL_H + row * row_h;
        let (h, rows_n, rows_mm) = match panel.plane {
            Plane::Axial => (h_axial, ny, sp[1]),
            Plane::Coronal => (h_coronal, nz, sp[0]),
        };
        let world = match panel.plane {
            Plane::Axial => pre.geometry().voxel_to_world([
                panel.index as f64,
                ny as f64 / 2.0,
                nx as f64 / 2.0,
            ]),
            Plane::Coronal => pre.geometry().voxel_to_world([
                nz as f64 / 2.0,
                panel.index as f64,
                nx as f64 / 2.0,
            ]),
        };
        let label = match panel.plane {
            Plane::Axial => format!("AXIAL Z {:.1} MM", world[2]),
            Plane::Coronal => format!("CORONAL Y {:.1} MM", world[1]),
        };
        img.text(x0 as i64, (y0 - LABEL_H + 1) as i64, &label, 1, false, TEXT);
        // Voxel (z, y, x) shown at panel pixel (u, v).
        let voxel = |u: u32, v: u32| -> [usize; 3] {
            let x = if flip_x {
                nx - 1 - u as usize
            } else {
                u as usize
            };
            let r = (((v as f64 + 0.5) * px_mm / rows_mm) as usize).min(rows_n - 1);
            match panel.plane {
                Plane::Axial => [panel.index, if flip_y { ny - 1 - r } else { r }, x],
                Plane::Coronal => [if flip_z { nz - 1 - r } else { r }, panel.index, x],
            }
        };
        let window = &pre.config.window;
        for v in 0..h {
            for u in 0..w {
                let p = voxel(u, v);
                let g = (window.normalize(pre.volume.hu[p] as f32) * 255.0).round() as u8;
                img.set((x0 + u) as i64, (y0 + v) as i64, [g, g, g]);
            }
        }
        // Crop outline, then mask outline (a mask pixel with a neighbour outside the mask).
        let in_crop = |p: [usize; 3]| pre.crop.contains(p);
        let in_mask = |p: [usize; 3]| pre.lung.mask[p] != 0;
        for v in 0..h {
            for u in 0..w {
                let p = voxel(u, v);
                let edge = |inside: &dyn Fn([usize; 3]) -> bool| {
                    inside(p)
                        && [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)]
                            .iter()
                            .any(|&(du, dv)| {
                                let (uu, vv) = (u as i64 + du, v as i64 + dv);
                                uu < 0
                                    || vv < 0
                                    || uu >= w as i64
                                    || vv >= h as i64
                                    || !inside(voxel(uu as u32, vv as u32))
                            })
                };
                if edge(&in_mask) {
                    img.set((x0 + u) as i64, (y0 + v) as i64, OUTLINE);
                } else if edge(&in_crop) {
                    img.set((x0 + u) as i64, (y0 + v) as i64, CROP);
                }
            }
        }
    }
    img
}

fn fmt_spacing(sp: [f64; 3]) -> String {
    if sp[0] == sp[1] && sp[1] == sp[2] {
        format!("{}", sp[0])
    } else {
        format!("{} X {} X {}", sp[0], sp[1], sp[2])
    }
}

/// Draws the preview of `pre` and writes it to `path` as PNG.
pub fn write_preview_png(pre: &Preprocessed, path: impl AsRef<Path>) -> Result<()> {
    render_preview(pre).write_png(path)
}
