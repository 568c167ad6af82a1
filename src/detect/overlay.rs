//! A PNG of the top detections: one row per detection, with axial, coronal and sagittal
//! slices through its centre (a 128 mm field of view at 2 pixels per mm, lung window
//! [-1350, 150] HU), its circle, and its rank, probability and diameter.
//!
//! Radiological display: patient right on the image's left (axial, coronal), anterior on
//! the left (sagittal), anterior (axial) or superior (coronal, sagittal) at the top, when
//! the volume's direction is axis-aligned; oblique volumes are shown in voxel-axis order.

use super::Detection;
use crate::error::Result;
use crate::render::RgbImage;
use crate::volume::Volume;
use std::path::Path;

/// Field of view of each panel, mm.
pub const OVERLAY_FOV_MM: f64 = 128.0;
/// Pixels per mm.
const SCALE: f64 = 2.0;
const LABEL_H: u32 = 14;
const GAP: u32 = 6;
const CIRCLE: [u8; 3] = [255, 60, 40];
const TEXT: [u8; 3] = [255, 255, 255];
const BACKGROUND: [u8; 3] = [24, 24, 24];
const WINDOW: (f32, f32) = (-1350.0, 150.0);

/// Draws the first `max_rows` detections (in the given order) over `volume`.
pub fn render_overlay(volume: &Volume, detections: &[Detection], max_rows: usize) -> RgbImage {
    let rows = detections.len().min(max_rows).max(1);
    let panel = (OVERLAY_FOV_MM * SCALE) as u32;
    let width = 3 * panel + 4 * GAP;
    let height = rows as u32 * (LABEL_H + panel + GAP) + GAP;
    let mut img = RgbImage::new(width, height, BACKGROUND);
    if detections.is_empty() {
        img.text(GAP as i64, GAP as i64, "NO DETECTIONS", 1, false, TEXT);
        return img;
    }
    let g = &volume.geometry;
    let shape = volume.shape();
    let d = g.direction;
    // Screen right / down in voxel-axis steps: sign per voxel axis for display.
    let sx = if d[2][0] < 0.0 { -1.0 } else { 1.0 }; // x index towards patient left -> right of screen
    let sy = if d[1][1] < 0.0 { -1.0 } else { 1.0 }; // y index towards posterior -> down
    let sz = if d[0][2] > 0.0 { -1.0 } else { 1.0 }; // z index towards head -> up
    for (r, det) in detections.iter().take(rows).enumerate() {
        let y0 = GAP + r as u32 * (LABEL_H + panel + GAP) + LABEL_H;
        let c = g.world_to_voxel(det.centre_world);
        img.text(
            GAP as i64,
            (y0 - LABEL_H + 3) as i64,
            &format!(
                "{}. P {:.3}  D {:.1} MM  AT ({:.1}, {:.1}, {:.1})",
                r + 1,
                det.probability,
                det.diameter_mm,
                det.centre_world[0],
                det.centre_world[1],
                det.centre_world[2]
            ),
            1,
            false,
            TEXT,
        );
        // (axis across, sign, axis down, sign) per panel: axial, coronal, sagittal.
        let panels = [(2usize, sx, 1usize, sy), (2, sx, 0, sz), (1, -sy, 0, sz)];
        for (p, &(ax_u, s_u, ax_v, s_v)) in panels.iter().enumerate() {
            let x0 = GAP + p as u32 * (panel + GAP);
            for v in 0..panel {
                for u in 0..panel {
                    let du = (u as f64 + 0.5) / SCALE - OVERLAY_FOV_MM / 2.0;
                    let dv = (v as f64 + 0.5) / SCALE - OVERLAY_FOV_MM / 2.0;
                    let mut idx = c;
                    idx[ax_u] += s_u * du / g.spacing_mm[ax_u];
                    idx[ax_v] += s_v * dv / g.spacing_mm[ax_v];
                    let mut vox = [0usize; 3];
                    let mut inside = true;
                    for a in 0..3 {
                        let i = idx[a].round();
                        if !(i >= 0.0 && i < shape[a] as f64) {
                            inside = false;
                            break;
                        }
                        vox[a] = i as usize;
                    }
                    let grey = if inside {
                        let h = volume.hu[vox] as f32;
                        (((h - WINDOW.0) / (WINDOW.1 - WINDOW.0)).clamp(0.0, 1.0) * 255.0).round()
                            as u8
                    } else {
                        0
                    };
                    img.set((x0 + u) as i64, (y0 + v) as i64, [grey, grey, grey]);
                }
            }
            // The circle: radius diameter / 2 (at least 3 px), centred on the panel.
            let radius = (det.diameter_mm / 2.0 * SCALE).max(3.0) + 2.0;
            let (cx, cy) = ((x0 + panel / 2) as f64, (y0 + panel / 2) as f64);
            let steps = (radius * 8.0).ceil() as usize;
            for k in 0..steps {
                let t0 = k as f64 / steps as f64 * std::f64::consts::TAU;
                let t1 = (k + 1) as f64 / steps as f64 * std::f64::consts::TAU;
                img.line(
                    cx + radius * t0.cos(),
                    cy + radius * t0.sin(),
                    cx + radius * t1.cos(),
                    cy + radius * t1.sin(),
                    2.0,
                    CIRCLE,
                );
            }
        }
    }
    img
}

/// Draws [`render_overlay`] and writes it to `path` as PNG.
pub fn write_overlay_png(
    volume: &Volume,
    detections: &[Detection],
    max_rows: usize,
    path: impl AsRef<Path>,
) -> Result<()> {
    render_overlay(volume, detections, max_rows).write_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn overlay_draws_each_detection_centred_with_its_circle() {
        // A bright 10 mm ball in air at a known world point, 1 mm grid.
        let g = Geometry::new([1.0; 3], [-40.0, -40.0, -40.0]);
        let centre = [5.0, -3.0, 10.0];
        let hu = ndarray::Array3::from_shape_fn((80, 80, 80), |(z, y, x)| {
            let w = g.voxel_to_world([z as f64, y as f64, x as f64]);
            let d2: f64 = (0..3).map(|a| (w[a] - centre[a]).powi(2)).sum();
            if d2 < 25.0 {
                40
            } else {
                -1000
            }
        });
        let v = Volume::new(hu, g).unwrap();
        let det = Detection {
            centre_world: centre,
            diameter_mm: 10.0,
            probability: 0.9,
        };
        let img = render_overlay(&v, &[det, det], 5);
        let panel = (OVERLAY_FOV_MM * SCALE) as u32;
        assert_eq!(img.width, 3 * panel + 4 * GAP);
        assert_eq!(img.height, 2 * (LABEL_H + panel + GAP) + GAP);
        for p in 0..3 {
            let x0 = GAP + p * (panel + GAP);
            let y0 = GAP + LABEL_H;
            // The ball is bright at each panel's centre, air is dark beside it.
            let centre_px = img.pixel(x0 + panel / 2, y0 + panel / 2).unwrap();
            assert!(centre_px[0] > 200, "panel {p}: {centre_px:?}");
            let far = img.pixel(x0 + 10, y0 + panel / 2).unwrap();
            assert!(far[0] < 30);
            // The circle (radius 12 px) is drawn in its colour.
            assert_eq!(img.pixel(x0 + panel / 2 + 12, y0 + panel / 2), Some(CIRCLE));
        }
        let empty = render_overlay(&v, &[], 5);
        assert_eq!(empty.height, LABEL_H + panel + 2 * GAP);
    }
}
