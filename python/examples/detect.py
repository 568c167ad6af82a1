"""Find the nodules of a CT and write them as a LUNA16 submission.

    python python/examples/detect.py <ct> [--model model.safetensors] [--device auto]

<ct> is a DICOM folder, a .mhd/.mha or a .nii/.nii.gz. Without --model the shipped model
(trained on synthetic phantoms only) runs. Without <ct>, a phantom is made and its nodules
are printed against the truth.
"""

from __future__ import annotations

import argparse
import math

import lungcad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ct", nargs="?", help="CT to read (default: a synthetic phantom)")
    ap.add_argument("--model", help="lungcad model file (default: the shipped model)")
    ap.add_argument("--device", default="auto", help="auto, wgpu, cpu or cuda")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", default="detections.csv")
    args = ap.parse_args()

    detector = lungcad.Detector(args.model, device=args.device)
    print(detector)
    if args.ct is None:
        phantom = lungcad.synth(5000, nodules=[1, 4], nodule_diameter_mm=[6.0, 30.0])
        volume = phantom.volume
        truth = phantom.nodules
    else:
        volume = lungcad.load(args.ct)
        truth = []
    print(volume)
    nodules = detector.detect(volume, threshold=args.threshold)
    for rank, n in enumerate(nodules[:10], 1):
        print(f"{rank:>3}  {n.coord_x:8.1f} {n.coord_y:8.1f} {n.coord_z:8.1f} mm  "
              f"{n.diameter_mm:5.1f} mm  p={n.probability:.3f}")
    for t in truth:
        d = min(
            (math.dist((n.coord_x, n.coord_y, n.coord_z), (t.coord_x, t.coord_y, t.coord_z)) for n in nodules),
            default=math.inf,
        )
        print(f"truth {t.kind:>13} {t.diameter_mm:5.1f} mm: nearest detection {d:.1f} mm away")
    lungcad.to_luna_csv(nodules, args.out)
    print(f"wrote {len(nodules)} detection(s) to {args.out}")


if __name__ == "__main__":
    main()
