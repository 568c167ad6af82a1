"""Loading, Volume and its geometry, numpy and SimpleITK conversions, preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lungcad


def test_lidc_0001_matches_pydicom(lidc_0001: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    vol = lungcad.load(lidc_0001)
    slices = []
    for f in sorted(lidc_0001.rglob("*")):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue
        if "PixelData" not in ds or ds.get("SeriesInstanceUID") != vol.series_uid:
            continue
        slices.append(ds)
    normal = np.cross(
        np.asarray(slices[0].ImageOrientationPatient[:3], float),
        np.asarray(slices[0].ImageOrientationPatient[3:], float),
    )
    slices.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    expected = np.stack(
        [
            np.round(
                ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            ).astype(np.int16)
            for ds in slices
        ]
    )
    assert vol.array.shape == expected.shape == vol.shape
    np.testing.assert_array_equal(vol.array, expected)
    np.testing.assert_allclose(vol.origin_mm, [float(v) for v in slices[0].ImagePositionPatient])
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    assert vol.spacing_mm[1:] == pytest.approx((dy, dx))
    assert vol.format == "dicom" and vol.modality == "CT"


def test_lidc_0001_geometry_matches_simpleitk(lidc_0001: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    vol = lungcad.load(lidc_0001)
    reader = sitk.ImageSeriesReader()
    folder = next(f.parent for f in sorted(lidc_0001.rglob("*.dcm")))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), vol.series_uid))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), vol.array)
    for zyx in [(0.0, 0.0, 0.0), (10.5, 200.25, 31.0), (132.0, 511.0, 511.0)]:
        itk_point = image.TransformContinuousIndexToPhysicalPoint(zyx[::-1])
        np.testing.assert_allclose(vol.voxel_to_world(zyx), itk_point, atol=1e-6)
    back = lungcad.from_sitk(image, vol.series_uid)
    assert back.spacing_mm == pytest.approx(vol.spacing_mm)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)


def rotation() -> np.ndarray:
    a = np.deg2rad(20.0)
    # Rows: world (x, y, z) unit vectors of voxel axes z, y, x; a rotation about world z.
    return np.array(
        [[0.0, 0.0, 1.0], [-np.sin(a), np.cos(a), 0.0], [np.cos(a), np.sin(a), 0.0]]
    )


def test_from_numpy_round_trips_array_and_geometry() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-1024, 3000, size=(7, 9, 11), dtype=np.int16)
    d = rotation()
    vol = lungcad.Volume.from_numpy(a, (2.5, 0.7, 0.8), (-100.0, 20.0, 5.0), d, "1.2.3")
    np.testing.assert_array_equal(vol.array, a)
    assert vol.shape == (7, 9, 11)
    assert vol.spacing_mm == (2.5, 0.7, 0.8)
    assert vol.origin_mm == (-100.0, 20.0, 5.0)
    np.testing.assert_allclose(vol.direction, d)
    assert vol.series_uid == "1.2.3" and vol.format == "numpy"
    zyx = (3.0, 4.5, 6.25)
    expected = np.asarray(vol.origin_mm) + sum(
        zyx[k] * vol.spacing_mm[k] * d[k] for k in range(3)
    )
    np.testing.assert_allclose(vol.voxel_to_world(zyx), expected, atol=1e-9)
    np.testing.assert_allclose(vol.world_to_voxel(tuple(expected)), zyx, atol=1e-9)
    # Other integer types are converted when they fit; the array is a read-only view.
    vol32 = lungcad.Volume.from_numpy(a.astype(np.int32), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(vol32.array, a)
    assert vol32.origin_mm == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        vol.array[0, 0, 0] = 1


def test_from_numpy_refuses_what_is_not_a_ct() -> None:
    a = np.zeros((4, 5, 6), np.int16)
    with pytest.raises(TypeError):
        lungcad.Volume.from_numpy(a.astype(np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.Volume.from_numpy(np.zeros((4, 5), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.Volume.from_numpy(np.full((2, 2, 2), 40000, np.int32), (1.0, 1.0, 1.0))
    with pytest.raises(lungcad.GeometryError):
        lungcad.Volume.from_numpy(a, (0.0, 1.0, 1.0))
    with pytest.raises(lungcad.GeometryError):
        lungcad.Volume.from_numpy(a, (1.0, 1.0, 1.0), direction=[[1, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_simpleitk_round_trip() -> None:
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(1)
    a = rng.integers(-1000, 1000, size=(5, 6, 7), dtype=np.int16)
    vol = lungcad.Volume.from_numpy(a, (2.0, 0.5, 0.75), (10.0, -20.0, 30.0), rotation())
    image = lungcad.to_sitk(vol)
    assert image.GetSpacing() == pytest.approx((0.75, 0.5, 2.0))
    for zyx in [(0.0, 0.0, 0.0), (4.0, 2.5, 1.0)]:
        np.testing.assert_allclose(
            image.TransformContinuousIndexToPhysicalPoint(zyx[::-1]), vol.voxel_to_world(zyx)
        )
    back = lungcad.from_sitk(image)
    np.testing.assert_array_equal(back.array, a)
    assert back.spacing_mm == pytest.approx(vol.spacing_mm)
    assert back.origin_mm == pytest.approx(vol.origin_mm)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)


def test_save_and_load_metaimage(tmp_path: Path) -> None:
    a = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    vol = lungcad.Volume.from_numpy(a, (2.0, 1.0, 0.5), (1.0, 2.0, 3.0), rotation())
    vol.save(tmp_path / "v.mhd")
    back = lungcad.load(tmp_path / "v.mhd")
    np.testing.assert_array_equal(back.array, a)
    assert back.spacing_mm == pytest.approx(vol.spacing_mm)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)


def test_load_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        lungcad.load(tmp_path / "missing.mhd")
    assert e.value.filename == str(tmp_path / "missing.mhd")
    bad = tmp_path / "bad.mhd"
    bad.write_text("NDims = 3\nDimSize = 2 2\n")
    with pytest.raises(lungcad.FormatError):
        lungcad.load(bad)
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(lungcad.DicomError):
        lungcad.load(tmp_path / "dicom")
    vol = lungcad.Volume.from_numpy(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0))
    vol.save(tmp_path / "v.mhd")
    with pytest.raises(lungcad.LimitError):
        lungcad.load(tmp_path / "v.mhd", max_voxels=10)
    assert issubclass(lungcad.LimitError, lungcad.LungcadError)


def ct_dataset(sop_class: str, transfer_syntax: str, series: str) -> Any:
    """A pydicom data set with its file meta group: a new SOP instance of `sop_class` in
    `series`, modality CT."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    return ds


def write_tilted_series(
    folder: Path, row_shift_mm: float = 0.8, gantry_detector_tilt: float | None = None
) -> np.ndarray:
    """Four 6 x 5 CT slices 2 mm apart, each shifted `row_shift_mm` along y from the one
    before (by default one row: a gantry tilt of atan(0.8 / 2) = 21.8 degrees), with
    GantryDetectorTilt when given. Returns their pixels."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 10).astype(np.int16)
    series = generate_uid()
    folder.mkdir()
    for k in range(4):
        ds = ct_dataset(CTImageStorage, ExplicitVRLittleEndian, series)
        ds.Rows, ds.Columns = 6, 5
        ds.PixelSpacing = [0.8, 0.8]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, round(row_shift_mm * k, 4), 2.0 * k]
        if gantry_detector_tilt is not None:
            ds.GantryDetectorTilt = gantry_detector_tilt
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels[k].tobytes()
        pydicom.dcmwrite(folder / f"{k}.dcm", ds, enforce_file_format=True)
    return pixels


def test_gantry_tilt_is_corrected_or_refused(tmp_path: Path) -> None:
    pixels = write_tilted_series(tmp_path / "tilted")
    vol = lungcad.load(tmp_path / "tilted")
    # Slice k moved k rows along y: the grid grows by 3 rows and slice k's row i is the
    # volume's row i + k; rows no slice covers are air.
    assert vol.array.shape == (4, 9, 5)
    assert vol.origin_mm == pytest.approx((0.0, 0.0, 0.0))
    for k in range(4):
        np.testing.assert_array_equal(vol.array[k, k : k + 6], pixels[k])
        assert (vol.array[k, :k] == -1024).all() and (vol.array[k, k + 6 :] == -1024).all()
    assert any(w.startswith("gantry tilt of 21.80 degrees corrected") for w in vol.warnings)
    with pytest.raises(lungcad.DicomError, match="gantry tilt of 21.80 degrees"):
        lungcad.load(tmp_path / "tilted", gantry_tilt="refuse")
    with pytest.raises(lungcad.InvalidArgumentError, match="use correct or refuse"):
        lungcad.load(tmp_path / "tilted", gantry_tilt="sideways")  # type: ignore[arg-type]
    # A tilt recorded in GantryDetectorTilt alone: loaded as positioned, with a warning.
    pixels = write_tilted_series(tmp_path / "recorded", row_shift_mm=0.0, gantry_detector_tilt=15.0)
    vol = lungcad.load(tmp_path / "recorded")
    np.testing.assert_array_equal(vol.array, pixels)
    assert any(w.startswith("GantryDetectorTilt is 15 degrees") for w in vol.warnings), vol.warnings


def test_stack_picks_one_of_several_stacks_in_a_series(tmp_path: Path) -> None:
    """Two reconstructions of four slices each, of different pixel spacing, under one
    SeriesInstanceUID: refused with both numbered; `stack=` loads either."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    pixels = {}
    for name, spacing in [("a", 0.8), ("b", 0.5)]:
        pixels[name] = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * spacing * 10).astype(np.int16)
        for k in range(4):
            ds = ct_dataset(CTImageStorage, ExplicitVRLittleEndian, series)
            ds.Rows, ds.Columns = 6, 5
            ds.PixelSpacing = [spacing, spacing]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = 1, 0
            ds.PixelData = pixels[name][k].tobytes()
            pydicom.dcmwrite(tmp_path / f"{name}{k}.dcm", ds, enforce_file_format=True)
    with pytest.raises(lungcad.DicomError, match=r"form 2 stacks .* choose one with --stack N"):
        lungcad.load(tmp_path)
    for k, name, spacing in [(1, "a", 0.8), (2, "b", 0.5)]:
        vol = lungcad.load(tmp_path, stack=k)
        np.testing.assert_array_equal(vol.array, pixels[name])
        assert vol.spacing_mm == pytest.approx((2.0, spacing, spacing))
        assert f"loaded the one asked for, stack {k}, 4 plane(s)" in vol.warnings[0]
    with pytest.raises(lungcad.DicomError, match="stack 3 asked for, but the series' planes form 2"):
        lungcad.load(tmp_path, stack=3)
    listed = lungcad.list_series(tmp_path)
    assert (listed["files_seen"], listed["skipped"]) == (8, 0)
    [entry] = listed["series"]
    assert entry["series_uid"] == series and entry["planes"] == 8 and entry["files"] == 8
    assert [(st["stack"], st["planes"], st["pixel_spacing_mm"]) for st in entry["stacks"]] == [
        (1, 4, [0.8, 0.8]),
        (2, 4, [0.5, 0.5]),
    ]
    assert entry["stacks"][0]["extent_mm"] == pytest.approx(6.0)
    # The only series, CT: the default, though loading it needs a stack named.
    assert entry["default"] is True and entry["default_stack"] is None
    with pytest.raises(lungcad.DicomError):
        lungcad.list_series(tmp_path / "none")


def test_acr_nema_files_without_the_dicom_header_load(tmp_path: Path) -> None:
    """Bare implicit VR data sets, as ACR-NEMA stored them: no preamble, "DICM" or file meta
    group, no SeriesInstanceUID, the retired Image Position and Image Orientation."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset

    pixels = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 7 - 200).astype(np.int16)
    for k in range(3):
        ds = Dataset()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.ImagePosition = [-10.0, 20.0, 30.0 + 2.5 * k]
        ds.ImageOrientation = [1, 0, 0, 0, 1, 0]
        ds.Rows, ds.Columns = 4, 5
        ds.PixelSpacing = [0.7, 0.6]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels[k].tobytes()
        pydicom.dcmwrite(tmp_path / f"{k}.ima", ds, implicit_vr=True, little_endian=True)
        assert (tmp_path / f"{k}.ima").read_bytes()[:2] == b"\x08\x00"
    vol = lungcad.load(tmp_path)
    np.testing.assert_array_equal(vol.array, pixels)
    assert vol.series_uid is None
    assert vol.origin_mm == pytest.approx((-10.0, 20.0, 30.0))
    assert vol.spacing_mm == pytest.approx((2.5, 0.7, 0.6))


def test_preprocess_crop_maps_back_to_the_volume(coarse_phantom: lungcad.Phantom) -> None:
    vol = coarse_phantom.volume
    pre = lungcad.preprocess(vol, spacing_mm=(2.0, 2.0, 2.0), crop_margin_mm=4.0)
    assert pre.array.dtype == np.float32 and pre.lung_mask.dtype == np.uint8
    assert pre.array.shape == pre.lung_mask.shape
    assert pre.spacing_mm == (2.0, 2.0, 2.0)
    assert pre.volume.spacing_mm == (2.0, 2.0, 2.0)
    assert pre.config["crop_margin_mm"] == 4.0
    assert 0 < pre.lung_mask.sum() < pre.lung_mask.size
    assert pre.lung_volume_ml > 500
    np.testing.assert_allclose(
        pre.voxel_to_world((0.0, 0.0, 0.0)), pre.volume.voxel_to_world(pre.crop_start_vox)
    )
    # Every nodule centre lies in the crop and in the lung mask.
    for n in coarse_phantom.nodules:
        z, y, x = (int(round(v)) for v in pre.world_to_voxel((n.coord_x, n.coord_y, n.coord_z)))
        assert pre.lung_mask[z, y, x] == 1
    with pytest.raises(lungcad.InvalidArgumentError, match="spacing"):
        lungcad.preprocess(vol, spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="unknown field"):
        lungcad.preprocess(vol, spacing=(1.0, 1.0, 1.0))


def test_default_configs_are_the_rust_defaults() -> None:
    pre = lungcad.default_config("preprocess")
    assert pre["spacing_mm"] == [1.0, 1.0, 1.0]
    assert pre["patch"]["size_vox"] == [128, 128, 128]
    assert lungcad.default_config("eval")["max_candidates_per_scan"] == 100
    assert lungcad.default_config("train")["batch_size"] == 32
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.default_config("nope")


def test_enhanced_ct_in_12_bit_jpeg_matches_libjpeg_turbo(tmp_path: Path) -> None:
    """An enhanced multi-frame CT in 12-bit JPEG Extended (1.2.840.10008.1.2.4.51): three
    frames stored head first (frame 0 is the highest slice) in four fragments (frame 1
    split in two), so the frames are read from the joined fragments. Every voxel equals
    libjpeg-turbo's decoding of its frame, plus the intercept."""
    pydicom = pytest.importorskip("pydicom")
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, JPEGExtended12Bit, generate_uid

    def item(**kw: object) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    rng = np.random.default_rng(3)
    frames = [
        (np.add.outer(np.arange(24) * 40, np.arange(30) * 25) + 100 * k + rng.integers(0, 60, (24, 30)))
        .clip(0, 4095)
        .astype(np.uint16)
        for k in range(3)
    ]
    streams = [imagecodecs.jpeg8_encode(f, level=80, bitspersample=12) for f in frames]
    decoded = [imagecodecs.jpeg8_decode(s).astype(np.int32) for s in streams]
    ds = ct_dataset(EnhancedCTImageStorage, JPEGExtended12Bit, generate_uid())
    ds.Rows, ds.Columns, ds.NumberOfFrames = 24, 30, 3
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            item(
                PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
                PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.7, 0.7], SliceThickness=1.5)]),
                PixelValueTransformationSequence=Sequence(
                    [item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, 3.0 - 1.5 * k])])) for k in range(3)]
    )
    def fragment(b: bytes) -> bytes:
        b += b"\0" * (len(b) % 2)
        return b"\xfe\xff\x00\xe0" + len(b).to_bytes(4, "little") + b

    s1 = streams[1]
    fragments = [streams[0], s1[:500], s1[500:], streams[2]]
    # An empty basic offset table, then one item per fragment.
    ds.PixelData = fragment(b"") + b"".join(fragment(f) for f in fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    pydicom.dcmwrite(tmp_path / "enhanced.dcm", ds, enforce_file_format=True)

    vol = lungcad.load(tmp_path / "enhanced.dcm")
    assert vol.array.shape == (3, 24, 30)
    assert vol.spacing_mm == pytest.approx((1.5, 0.7, 0.7))
    # Loaded along +z: plane z holds frame 2 - z.
    for z in range(3):
        np.testing.assert_array_equal(vol.array[z], decoded[2 - z] - 1024)
