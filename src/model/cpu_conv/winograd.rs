//! The 3 x 3 x 3 convolutions of wide layers by Winograd's minimal filtering, F(2³, 3³).
//!
//! A 2 x 2 x 2 block of outputs (a *tile*) of a 3 x 3 x 3 convolution depends on a
//! 4 x 4 x 4 block of inputs. Winograd's F(2, 3) computes two outputs of a 3-tap filter from
//! four inputs with four products instead of six: transform the inputs (`Bᵀ d`) and the
//! filter (`G g`), multiply them point by point, transform back (`Aᵀ m`). Nested over three
//! axes, a tile takes 4³ = 64 products per input and output channel instead of
//! 2³ x 3³ = 216, 3.375 times fewer. Summed over input channels, the point-by-point products
//! become 64 independent matrix products per batch of tiles:
//! `(tiles, C_in) x (C_in, C_out)`, one per transformed position.
//!
//! The transforms hold only additions, subtractions and halvings, so with finite inputs
//! rounding stays that of a few more additions per value (the tests in `cpu_conv.rs` hold
//! both paths to 1e-4 of a plain loop in f64, and MONAI's full-size network to 1e-4 of
//! MONAI's outputs). An infinite input value would enter several transformed values with
//! opposite signs and come out NaN where a direct convolution gives ±inf, so the caller
//! keeps non-finite inputs on the direct path. Each output value is computed by the same
//! sequence of operations whatever the number of threads.
//!
//! Worth it when the products are long, that is when both channel counts are wide
//! ([`MIN_CHANNELS`]): per tile the products take `64 C_in C_out` multiply-adds, while the
//! transforms take about 160 additions per input channel and 100 per output channel and
//! move 64 values per channel through memory, which with few channels costs what the
//! saved multiplications would.

use super::{product, relu, Epilogue, Layout};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// The transforms' vectors (a value per tile of a batch) are whole blocks of `L` values, an
/// AVX-512 register's worth, so the last output pass reads fixed-size blocks.
const L: usize = 16;

/// `L` values.
type Lanes = [f32; L];

/// The fewest input and output channels a layer needs for this path (measured in
/// docs/PERFORMANCE.md: below it the transforms eat the gain).
pub(super) const MIN_CHANNELS: usize = 64;

/// Tiles per batch of 64 matrix products (whole rows of tiles: more when a row is longer).
/// A thread's buffers hold the batch's transformed inputs and products, `64 TILES (C_in +
/// C_out)` values: 16 MiB for 256 channels in and out. Batches of 64 to 512 tiles ran at the
/// same speed on the project's machine.
const TILES: usize = 128;

/// Transformed positions per tile (4³).
const POINTS: usize = 64;

/// Whether a convolution of this kernel and these widths takes this module's path.
pub(super) fn applies(kernel: [usize; 3], c_in: usize, c_out: usize) -> bool {
    kernel == [3, 3, 3] && c_in >= MIN_CHANNELS && c_out >= MIN_CHANNELS
}

/// The filter transform `G g Gᵀ` (over three axes) of every (input, output) channel pair:
/// from `w_rows`, the weights as `(27, C_in, C_out)` (tap `(kz 3 + ky) 3 + kx`), to
/// `(64, C_in, C_out)` (point `(i 4 + j) 4 + k`).
pub(super) fn transform_weights(w_rows: &[f32], c_in: usize, c_out: usize) -> Vec<f32> {
    let pairs = c_in * c_out;
    assert_eq!(w_rows.len(), 27 * pairs, "weight length");
    let mut u = vec![0f32; POINTS * pairs];
    // In blocks of pairs, so each pass reads and writes cached values.
    const BLOCK: usize = 512;
    let mut taps = vec![0f32; 27 * BLOCK];
    let mut x_pass = vec![0f32; 36 * BLOCK];
    let mut y_pass = vec![0f32; 48 * BLOCK];
    for first in (0..pairs).step_by(BLOCK) {
        let n = BLOCK.min(pairs - first);
        for (t, dst) in taps.chunks_exact_mut(n).take(27).enumerate() {
            dst.copy_from_slice(&w_rows[t * pairs + first..][..n]);
        }
        // Layouts, with the last index the block's pairs: taps [kz][ky][kx], x_pass
        // [kz][ky][k], y_pass [kz][j][k], u [i][j][k].
        for zy in 0..9 {
            filter(&taps[zy * 3 * n..], n, &mut x_pass[zy * 4 * n..], n, n);
        }
        for kz in 0..3 {
            for k in 0..4 {
                filter(
                    &x_pass[(kz * 12 + k) * n..],
                    4 * n,
                    &mut y_pass[(kz * 16 + k) * n..],
                    4 * n,
                    n,
                );
            }
        }
        for jk in 0..16 {
            filter(
                &y_pass[jk * n..],
                16 * n,
                &mut u[jk * pairs + first..],
                16 * pairs,
                n,
            );
        }
    }
    u
}

/// The convolution of `x`, `(n, c_in, d, h, w)` row-major, zero `padding` on both sides of
/// each axis; `u` the filters from [`transform_weights`]; `out` the output,
/// `(n, c_out, od, oh, ow)` with `od = d + 2 padding - 2` (and so on), each value written
/// once, through the `epilogue`.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv(
    x: &[f32],
    [n, c_in, d, h, w]: [usize; 5],
    padding: [usize; 3],
    u: &[f32],
    [c_out, od, oh, ow]: [usize; 4],
    out: &mut [f32],
    epilogue: &Epilogue,
) {
    assert!(
        (0..3).all(|a| [d, h, w][a] + 2 * padding[a] == [od, oh, ow][a] + 2),
        "output extent of a 3 x 3 x 3 kernel"
    );
    let sample = c_in * d * h * w;
    assert_eq!(x.len(), n * sample, "input length");
    assert_eq!(u.len(), POINTS * c_in * c_out, "filter length");
    assert_eq!(out.len(), n * c_out * od * oh * ow, "output length");
    let (ty, tx) = (oh.div_ceil(2), ow.div_ceil(2));
    let plane = oh * ow;
    // A task per sample and plane of tiles (a pair of output planes), holding those planes
    // of each output channel: planes[s tz + a] = (s, a, [co]).
    let tz = od.div_ceil(2);
    let mut planes: Vec<(usize, usize, Vec<&mut [f32]>)> = (0..n * tz)
        .map(|t| (t / tz, t % tz, Vec::with_capacity(c_out)))
        .collect();
    for (s, output) in out.chunks_exact_mut(c_out * od * plane).enumerate() {
        for channel in output.chunks_exact_mut(od * plane) {
            for (a, pair) in channel.chunks_mut(2 * plane).enumerate() {
                planes[s * tz + a].2.push(pair);
            }
        }
    }
    let layer = Layer {
        c_in,
        c_out,
        input: [d, h, w],
        padding,
        output: [od, oh, ow],
        tx,
    };
    let rows_per_batch = (TILES / tx).max(1);
    let arch = pulp::Arch::new();
    // Planes cost the same: a group of them per thread, with one set of buffers each.
    let per_group = planes.len().div_ceil(rayon::current_num_threads()).max(1);
    planes.into_par_iter().chunks(per_group).for_each(|group| {
        let mut buffers = Buffers::default();
        let buf = &mut buffers;
        for (s, a, mut channels) in group {
            let x = &x[s * sample..][..sample];
            for b0 in (0..ty).step_by(rows_per_batch) {
                let rows = rows_per_batch.min(ty - b0);
                let batch = Batch::new(&layer, [a, b0, rows]);
                buf.fit(&batch);
                arch.dispatch(InputPass {
                    x,
                    batch: &batch,
                    buf,
                });
                // Tile-major: tile i of channel j at i + j ntp.
                let (nt, at) = (
                    batch.nt,
                    Layout {
                        row: 1,
                        col: batch.ntp,
                    },
                );
                for p in 0..POINTS {
                    let lhs = &buf.v[p * c_in * batch.ntp..][..c_in * batch.ntp];
                    let rhs = &u[p * c_in * c_out..][..c_in * c_out];
                    let dst = &mut buf.m[p * c_out * batch.ntp..][..c_out * batch.ntp];
                    let rhs = (rhs, Layout::rows(c_out));
                    product([nt, c_in, c_out], (lhs, at), rhs, (dst, at), false);
                }
                arch.dispatch(OutputPass {
                    batch: &batch,
                    buf,
                    channels: &mut channels,
                    epilogue,
                });
            }
        }
    });
}

/// The layer's sizes.
struct Layer {
    c_in: usize,
    c_out: usize,
    /// The input's extent `(d, h, w)` and padding, the output's extent.
    input: [usize; 3],
    padding: [usize; 3],
    output: [usize; 3],
    /// Tiles along x.
    tx: usize,
}

/// A batch of tiles: whole rows `b0..b0 + rows` of tile plane `a` (and, through `Deref`, the
/// layer's sizes).
struct Batch<'l> {
    layer: &'l Layer,
    a: usize,
    b0: usize,
    rows: usize,
    /// The batch's tiles, and its vectors' length: `nt` rounded up to whole blocks.
    nt: usize,
    ntp: usize,
    /// The length of one parity's input rows after the pass along x: `rows + 1` rows of `tx`
    /// tiles, rounded up to whole blocks and one more.
    half: usize,
}

impl<'l> Batch<'l> {
    fn new(layer: &'l Layer, [a, b0, rows]: [usize; 3]) -> Self {
        let nt = rows * layer.tx;
        Batch {
            layer,
            a,
            b0,
            rows,
            nt,
            ntp: nt.div_ceil(L) * L,
            half: ((rows + 1) * layer.tx).div_ceil(L) * L + L,
        }
    }
}

impl std::ops::Deref for Batch<'_> {
    type Target = Layer;

    fn deref(&self) -> &Layer {
        self.layer
    }
}

/// A group's buffers, reused from batch to batch: transformed inputs `v` `(64, c_in, ntp)`,
/// products `m` `(64, c_out, ntp)`, scratch `t` for the passes of one channel, and a padded
/// input row.
#[derive(Default)]
struct Buffers {
    v: Vec<f32>,
    m: Vec<f32>,
    t: Vec<f32>,
    row: Vec<f32>,
}

impl Buffers {
    /// Sized for `batch`; `row` zeroed.
    fn fit(&mut self, b: &Batch) {
        self.v.resize(POINTS * b.c_in * b.ntp, 0.0);
        self.m.resize(POINTS * b.c_out * b.ntp, 0.0);
        // The last pass reads up to a block past a row of tiles.
        self.t.resize(32 * b.half + 64 * b.ntp + b.tx + 2 * L, 0.0);
        self.row.clear();
        self.row.resize(2 * b.tx + 2, 0.0);
    }
}

/// [`input_tiles`] on every input channel, compiled for the best instruction set the CPU
/// has (`pulp::Arch::dispatch`: this crate is built for baseline x86-64).
struct InputPass<'a> {
    x: &'a [f32],
    batch: &'a Batch<'a>,
    buf: &'a mut Buffers,
}

impl WithSimd for InputPass<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for ci in 0..self.batch.c_in {
            input_tiles(self.x, self.batch, ci, self.buf);
        }
    }
}

/// [`output_tiles`] on every output channel, compiled as [`InputPass`] is.
struct OutputPass<'a, 'o> {
    batch: &'a Batch<'a>,
    buf: &'a mut Buffers,
    channels: &'a mut [&'o mut [f32]],
    epilogue: &'a Epilogue,
}

impl WithSimd for OutputPass<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for (co, dst) in self.channels.iter_mut().enumerate() {
            output_tiles(self.batch, co, self.buf, dst, self.epilogue);
        }
    }
}

/// `L` values of `v` from `at`.
#[inline(always)]
fn load(v: &[f32], at: usize) -> Lanes {
    let mut values = [0f32; L];
    values.copy_from_slice(&v[at..at + L]);
    values
}

/// `Bᵀ d B` over three axes, on input channel `ci` of the batch's tiles: into `buf.v`,
/// point `p`'s values of the batch's tiles at `(p c_in + ci) ntp`.
///
/// A tile starts at an even input position and reads four: along an axis, tile `t` reads
/// `e[t], o[t], e[t + 1], o[t + 1]` of the even (`e`) and odd (`o`) positions. Along y the
/// pass keeps each parity's rows apart, so tile row `r` reads rows `r` and `r + 1` of each.
#[inline(always)]
fn input_tiles(x: &[f32], b: &Batch, ci: usize, buf: &mut Buffers) {
    let [d, h, w] = b.input;
    let [pz, py, px] = b.padding;
    let (tx, half) = (b.tx, b.half);
    let channel = &x[ci * d * h * w..][..d * h * w];
    // Along x, each of the 2 rows + 2 input rows of the 4 planes once: t as
    // [i][k][parity][row / 2][tile], each (i, k) block 2 half long.
    for i in 0..4 {
        let z = (2 * b.a + i).checked_sub(pz).filter(|z| *z < d);
        for yy in 0..2 * b.rows + 2 {
            let y = (2 * b.b0 + yy).checked_sub(py).filter(|y| *y < h);
            let first = (i * 8 + yy % 2) * half + yy / 2 * tx;
            let (Some(z), Some(y)) = (z, y) else {
                for k in 0..4 {
                    buf.t[first + 2 * k * half..][..tx].fill(0.0);
                }
                continue;
            };
            // The row, zero-padded (2 tx + 2 values): its borders are never written.
            buf.row[px..px + w].copy_from_slice(&channel[(z * h + y) * w..][..w]);
            let q = &buf.row[..2 * tx + 2];
            let [y0, y1, y2, y3] = four_mut(&mut buf.t[first..], 2 * half, tx);
            for c in 0..tx {
                let (q0, q1, q2, q3) = (q[2 * c], q[2 * c + 1], q[2 * c + 2], q[2 * c + 3]);
                y0[c] = q0 - q2;
                y1[c] = q1 + q2;
                y2[c] = q2 - q1;
                y3[c] = q1 - q3;
            }
        }
    }
    // Along y, t -> t [i][j][k][tile] after the x pass's blocks (at 32 half); along z,
    // into v.
    let (x_pass, y_pass) = buf.t.split_at_mut(32 * half);
    let ntp = b.ntp;
    for i in 0..4 {
        for k in 0..4 {
            let block = &x_pass[(i * 4 + k) * 2 * half..][..2 * half];
            let (even, odd) = block.split_at(half);
            let (e0, e1, o0, o1) = (
                &even[..ntp],
                &even[tx..][..ntp],
                &odd[..ntp],
                &odd[tx..][..ntp],
            );
            let [y0, y1, y2, y3] = four_mut(&mut y_pass[(i * 16 + k) * ntp..], 4 * ntp, ntp);
            for c in 0..ntp {
                y0[c] = e0[c] - e1[c];
                y1[c] = o0[c] + e1[c];
                y2[c] = e1[c] - o0[c];
                y3[c] = o0[c] - o1[c];
            }
        }
    }
    for jk in 0..16 {
        let dst = &mut buf.v[(jk * b.c_in + ci) * ntp..];
        input_1d(&y_pass[jk * ntp..], 16 * ntp, dst, 16 * b.c_in * ntp, ntp);
    }
}

/// `Aᵀ m A` over three axes, on output channel `co` of the batch's tiles (as in
/// [`input_tiles`]), then the `epilogue`, into `dst`: the channel's two output planes
/// `2a, 2a + 1` (one at the end of an odd depth).
#[inline(always)]
fn output_tiles(b: &Batch, co: usize, buf: &mut Buffers, dst: &mut [f32], epilogue: &Epilogue) {
    let [od, oh, ow] = b.output;
    let (tx, ntp) = (b.tx, b.ntp);
    // m [i][j][k] -> t0 [i][j][k'] -> t1 [i][j'][k'] -> t0 [i'][j'][k'], the 2³ outputs
    // of each tile; t0 and t1 the first and second 32 ntp values of t.
    let (t0, t1) = buf.t.split_at_mut(32 * ntp);
    for ij in 0..16 {
        let src = &buf.m[(ij * 4 * b.c_out + co) * ntp..];
        output_1d(src, b.c_out * ntp, &mut t0[ij * 2 * ntp..], ntp, ntp);
    }
    for i in 0..4 {
        for k in 0..2 {
            output_1d(
                &t0[(i * 8 + k) * ntp..],
                2 * ntp,
                &mut t1[(i * 4 + k) * ntp..],
                2 * ntp,
                ntp,
            );
        }
    }
    for jk in 0..4 {
        output_1d(&t1[jk * ntp..], 4 * ntp, &mut t0[jk * ntp..], 4 * ntp, ntp);
    }
    let (scale, shift) = epilogue.affine(co);
    let t = &buf.t;
    for i in 0..2 {
        let z = 2 * b.a + i;
        if z >= od {
            break;
        }
        for r in 0..b.rows {
            for j in 0..2 {
                let y = 2 * (b.b0 + r) + j;
                if y >= oh {
                    break;
                }
                let even = (i * 2 + j) * 2 * ntp + r * tx;
                let row = &mut dst[(i * oh + y) * ow..][..ow];
                if epilogue.relu {
                    interleave(row, t, even, ntp, |v| relu(v * scale + shift));
                } else {
                    interleave(row, t, even, ntp, |v| v * scale + shift);
                }
            }
        }
    }
}

/// `row[2c] = f(t[even + c])`, `row[2c + 1] = f(t[even + ntp + c])`, for the `row.len()`
/// values of `row`, a block of L tiles at a time (`t` holds a block past the row's end).
#[inline(always)]
fn interleave(row: &mut [f32], t: &[f32], even: usize, ntp: usize, f: impl Fn(f32) -> f32) {
    for (c0, dst) in (0..).step_by(L).zip(row.chunks_mut(2 * L)) {
        let (e, o) = (load(t, even + c0), load(t, even + ntp + c0));
        let mut pairs = [0f32; 2 * L];
        for l in 0..L {
            pairs[2 * l] = f(e[l]);
            pairs[2 * l + 1] = f(o[l]);
        }
        if let Ok(dst) = <&mut [f32; 2 * L]>::try_from(&mut *dst) {
            *dst = pairs;
        } else {
            let n = dst.len();
            dst.copy_from_slice(&pairs[..n]);
        }
    }
}

/// The first `n` values of four vectors of `v`, `stride` apart.
#[inline(always)]
fn four(v: &[f32], stride: usize, n: usize) -> [&[f32]; 4] {
    [
        &v[..n],
        &v[stride..][..n],
        &v[2 * stride..][..n],
        &v[3 * stride..][..n],
    ]
}

/// As [`four`], mutable: `stride` at least `n`.
#[inline(always)]
fn four_mut(v: &mut [f32], stride: usize, n: usize) -> [&mut [f32]; 4] {
    let (y0, rest) = v.split_at_mut(stride);
    let (y1, rest) = rest.split_at_mut(stride);
    let (y2, y3) = rest.split_at_mut(stride);
    [&mut y0[..n], &mut y1[..n], &mut y2[..n], &mut y3[..n]]
}

/// F(2, 3)'s input transform `Bᵀ` on four vectors: `(d0 - d2, d1 + d2, d2 - d1, d1 - d3)`.
#[inline(always)]
fn input_1d(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, n: usize) {
    let [x0, x1, x2, x3] = four(src, src_stride, n);
    let [y0, y1, y2, y3] = four_mut(dst, dst_stride, n);
    for i in 0..n {
        let (a, b, c, d) = (x0[i], x1[i], x2[i], x3[i]);
        y0[i] = a - c;
        y1[i] = b + c;
        y2[i] = c - b;
        y3[i] = b - d;
    }
}

/// F(2, 3)'s output transform `Aᵀ` on four vectors: `(m0 + m1 + m2, m1 - m2 - m3)`.
#[inline(always)]
fn output_1d(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, n: usize) {
    let [x0, x1, x2, x3] = four(src, src_stride, n);
    let (y0, y1) = dst.split_at_mut(dst_stride);
    let (y0, y1) = (&mut y0[..n], &mut y1[..n]);
    for i in 0..n {
        let (a, b, c, d) = (x0[i], x1[i], x2[i], x3[i]);
        y0[i] = a + b + c;
        y1[i] = b - c - d;
    }
}

/// F(2, 3)'s filter transform `G` on three vectors:
/// `(g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)`.
fn filter(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, n: usize) {
    let (x0, x1, x2) = (
        &src[..n],
        &src[src_stride..][..n],
        &src[2 * src_stride..][..n],
    );
    let (y0, rest) = dst.split_at_mut(dst_stride);
    let (y1, rest) = rest.split_at_mut(dst_stride);
    let (y2, y3) = rest.split_at_mut(dst_stride);
    let (y0, y1, y2, y3) = (&mut y0[..n], &mut y1[..n], &mut y2[..n], &mut y3[..n]);
    for i in 0..n {
        let (a, b, c) = (x0[i], x1[i], x2[i]);
        y0[i] = a;
        y1[i] = 0.5 * (a + b + c);
        y2[i] = 0.5 * (a - b + c);
        y3[i] = c;
    }
}
