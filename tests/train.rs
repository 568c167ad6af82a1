//! Training data through the public API: augmented patches and their labels.

mod common;

use lungcad::detect::VoxelNodule;
use lungcad::preprocess::preprocess;
use lungcad::train::augment::{cut_patch, AugmentConfig, PatchTransform};
use lungcad::{Geometry, Limits};

fn phantom() -> (lungcad::preprocess::Preprocessed, VoxelNodule) {
    let g = Geometry::new([2.5, 2.0, 2.0], [-150.0, -120.0, -100.0]);
    let (v, nodule_world, _) = common::chest_phantom(g, [60, 120, 150], true);
    let pre = preprocess(&v, &common::tiny_preprocess_config(), &Limits::default()).unwrap();
    let c = pre.geometry().world_to_voxel(nodule_world);
    (
        pre,
        VoxelNodule {
            centre_vox: c,
            diameter_mm: 12.0,
        },
    )
}

#[test]
fn transforms_invert_and_identity_matches_the_tiler() {
    let (pre, nodule) = phantom();
    let size = [32; 3];
    let mut rng = lungcad::rng::SplitMix64::new(5);
    for _ in 0..50 {
        let t = PatchTransform::draw(
            nodule.centre_vox,
            size,
            [2.0; 3],
            &AugmentConfig::default(),
            &mut rng,
        );
        for p in [[0.0, 0.0, 0.0], [3.5, 20.0, 31.0], [17.2, -4.0, 40.0]] {
            let back = t.to_patch(t.to_grid(p));
            for a in 0..3 {
                assert!((back[a] - p[a]).abs() < 1e-9, "{t:?}: {p:?} -> {back:?}");
            }
        }
    }
    // The identity transform at an integer centre is the tiler's patch, exactly.
    let centre = nodule.centre_vox.map(|v| v.round() + 0.5);
    let t = PatchTransform::identity(centre, size);
    let offset = [0, 1, 2].map(|a| (centre[a] - 15.5) as i64);
    let expect = pre.patch(offset, size).unwrap().data;
    assert_eq!(cut_patch(&pre, &t).unwrap(), expect);
}

/// The label follows the image: wherever the augmented nodule's centre lands in the patch,
/// the patch is nodule-bright there and parenchyma-dark a nodule radius plus a margin
/// beyond it, for every flip, rotation and scale drawn.
#[test]
fn labels_follow_the_image_under_every_augmentation() {
    let (pre, nodule) = phantom();
    let w = &pre.config.window;
    let (bright, dark) = (w.normalize(30.0), w.normalize(-850.0));
    let size = [32; 3];
    let mut rng = lungcad::rng::SplitMix64::new(11);
    let mut seen_rotations = std::collections::HashSet::new();
    for i in 0..64 {
        // Off-centre patches, so a wrong flip or turn moves the nodule visibly.
        let centre = [
            nodule.centre_vox[0] + 3.0,
            nodule.centre_vox[1] - 5.0,
            nodule.centre_vox[2] + 4.0,
        ];
        let t = PatchTransform::draw(centre, size, [2.0; 3], &AugmentConfig::default(), &mut rng);
        seen_rotations.insert((t.perm, t.sign.map(|s| s > 0.0)));
        let patch = cut_patch(&pre, &t).unwrap();
        let n = t.nodule_to_patch(&nodule);
        assert!((n.diameter_mm / 12.0 - t.scale).abs() < 1e-12);
        let at = |p: [f64; 3]| patch[p.map(|v| v.round() as usize)];
        let c = n.centre_vox;
        assert!(
            (at(c) - bright).abs() < 0.03,
            "draw {i}: {t:?}: {} at the label's centre {c:?}, nodule is {bright}",
            at(c)
        );
        // 6 mm radius, 2 mm voxels, scaled: 3 * scale voxels; look 3 voxels further out
        // along the patch's x axis (lung parenchyma on the phantom's lateral side or the
        // medial side, both dark or body-bright, never nodule-bright at the same place on
        // both sides unless the label is wrong).
        let r = 3.0 * t.scale + 3.0;
        let outside = [[c[0], c[1], c[2] - r], [c[0], c[1], c[2] + r]];
        let darker = outside
            .iter()
            .filter(|p| {
                p.iter()
                    .zip(&size)
                    .all(|(v, n)| *v >= 0.0 && *v <= *n as f64 - 1.0)
            })
            .filter(|p| (at(**p) - dark).abs() < 0.05)
            .count();
        assert!(
            darker >= 1,
            "draw {i}: {t:?}: no parenchyma beside the labelled nodule"
        );
    }
    assert!(
        seen_rotations.len() >= 12,
        "{} of the 16 flips and turns drawn",
        seen_rotations.len()
    );
}

fn scan() -> lungcad::train::sampler::TrainScan {
    let (pre, nodule) = phantom();
    lungcad::train::sampler::TrainScan {
        series_uid: "phantom".into(),
        data: lungcad::train::sampler::ScanData::Memory(pre),
        nodules: vec![nodule],
    }
}

#[test]
fn epochs_are_planned_reproducibly_and_size_balanced() {
    use lungcad::detect::VoxelNodule;
    use lungcad::train::sampler::{plan_epoch, SamplerConfig};
    let mut s = scan();
    // Nine 5 mm nodules and one 25 mm one: balanced over the two non-empty bins, the large
    // one is drawn about half the time.
    s.nodules = (0..10)
        .map(|i| VoxelNodule {
            centre_vox: [10.0 + i as f64, 30.0, 30.0],
            diameter_mm: if i == 9 { 25.0 } else { 5.0 },
        })
        .collect();
    let scans = vec![s];
    let cfg = SamplerConfig::default();
    let a = plan_epoch(&scans, 1000, 3, 42, &cfg).unwrap();
    assert_eq!(a, plan_epoch(&scans, 1000, 3, 42, &cfg).unwrap());
    assert_ne!(
        a,
        plan_epoch(&scans, 1000, 4, 42, &cfg).unwrap(),
        "epochs differ"
    );
    let positives: Vec<usize> = a.iter().filter_map(|p| p.nodule).collect();
    assert_eq!(positives.len(), 500);
    let large = positives.iter().filter(|&&n| n == 9).count();
    assert!(
        (200..300).contains(&large),
        "large nodule drawn {large} of 500 times"
    );
    // Shuffled: positives spread over the epoch, not all first.
    assert!(
        a[..100].iter().any(|p| p.nodule.is_none()) && a[..100].iter().any(|p| p.nodule.is_some())
    );
}

#[test]
fn positive_samples_contain_their_nodule_and_its_targets() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::sampler::{make_sample, SampleSpec, SamplerConfig};
    let s = scan();
    let cfg = SamplerConfig::default();
    let head = HeadLayout::default();
    for seed in 0..20 {
        let spec = SampleSpec {
            scan: 0,
            nodule: Some(0),
            seed,
        };
        let sample = make_sample(&s, &spec, [32; 3], &head, &cfg).unwrap();
        assert_eq!(sample.image.dim(), (32, 32, 32));
        assert_eq!(sample.nodules.len(), 1, "seed {seed}");
        let n = sample.nodules[0];
        // Whole inside the patch (jitter keeps 2 voxels of room).
        let r = n.diameter_mm / 2.0 / 2.0; // mm -> 2 mm voxels
        for a in 0..3 {
            assert!(
                n.centre_vox[a] - r >= 0.0 && n.centre_vox[a] + r <= 31.0,
                "seed {seed}: {n:?}"
            );
        }
        let labels = (0..3).map(|a| sample.targets.index_axis(ndarray::Axis(0), 5 * a));
        let pos: usize = labels
            .map(|l| l.iter().filter(|&&v| v == 1.0).count())
            .sum();
        assert!(pos >= 1, "seed {seed}: no positive anchor cell");
        // Same spec, same sample.
        let again = make_sample(&s, &spec, [32; 3], &head, &cfg).unwrap();
        assert_eq!(again.image, sample.image);
    }
    // Negatives: centred in the lungs, no positive unless the nodule happens to be near.
    let spec = SampleSpec {
        scan: 0,
        nodule: None,
        seed: 1,
    };
    let neg = make_sample(&s, &spec, [32; 3], &head, &cfg).unwrap();
    assert!(
        neg.image.iter().any(|&v| v < 0.25),
        "no parenchyma in a lung-centred patch"
    );
}

#[test]
fn loss_is_small_for_the_ideal_output_and_large_for_its_opposite() {
    use lungcad::detect::{ideal_output, HeadLayout};
    use lungcad::model::{select_device, DeviceChoice};
    use lungcad::train::loss::{detection_loss, LossConfig};
    use lungcad::train::sampler::{make_sample, SampleSpec, SamplerConfig};
    let s = scan();
    let head = HeadLayout::default();
    let cfg = SamplerConfig::default();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let samples: Vec<_> = (0..2)
        .map(|seed| {
            let spec = SampleSpec {
                scan: 0,
                nodule: Some(0),
                seed,
            };
            make_sample(&s, &spec, [32; 3], &head, &cfg).unwrap()
        })
        .collect();
    let targets: Vec<_> = samples.iter().map(|s| s.targets.clone()).collect();
    let map = |conf: f32| {
        let outs: Vec<f32> = targets
            .iter()
            .flat_map(|t| ideal_output(t, conf).into_iter())
            .collect();
        burn::tensor::Tensor::<5>::from_data(
            burn::tensor::TensorData::new(outs, [2, 15, 8, 8, 8]),
            &device,
        )
    };
    let good = detection_loss(map(12.0), &targets, &LossConfig::default()).unwrap();
    println!("ideal: {:?}", good.parts);
    assert!(good.parts.positives >= 2);
    assert!(good.parts.total < 1e-4, "{:?}", good.parts);
    assert!(good.parts.regression < 1e-9);
    let bad = detection_loss(map(-12.0), &targets, &LossConfig::default()).unwrap();
    println!("opposite: {:?}", bad.parts);
    assert!(
        bad.parts.positive > 11.0 && bad.parts.negative > 11.0,
        "{:?}",
        bad.parts
    );
    // Wrong sizes are refused.
    assert!(detection_loss(map(1.0), &targets[..1], &LossConfig::default()).is_err());
}

/// A few Adam steps on one batch of phantom patches lower the loss (the network can learn).
#[test]
fn training_steps_lower_the_loss_on_the_cpu() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::loss::LossConfig;
    use lungcad::train::sampler::{make_sample, SampleSpec, SamplerConfig};
    use lungcad::train::Trainer;
    let s = scan();
    let detector = tiny_detector(s.data.config());
    let head = HeadLayout::default();
    let cfg = SamplerConfig::default();
    let batch: Vec<_> = (0..4)
        .map(|i| {
            let spec = SampleSpec {
                scan: 0,
                nodule: (i % 2 == 0).then_some(0),
                seed: i,
            };
            make_sample(&s, &spec, [32; 3], &head, &cfg).unwrap()
        })
        .collect();
    let mut trainer = Trainer::new(&detector, LossConfig::default(), &Default::default());
    let losses: Vec<f64> = (0..30)
        .map(|_| trainer.step(&batch, 3e-3).unwrap().total)
        .collect();
    println!("losses: {losses:.3?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[27..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.1 * first, "loss {first:.3} -> {last:.3}");
    // The trained weights run for inference.
    let d = trainer.detector();
    let out = d
        .forward_batch(
            lungcad::train::sampler::stack_images(&batch[..1]),
            1,
            [32; 3],
        )
        .unwrap();
    assert_eq!(out.len(), 15 * 8 * 8 * 8);
}

fn tiny_detector(pre: &lungcad::preprocess::PreprocessConfig) -> lungcad::model::Detector {
    use lungcad::model::{select_device, Detector, DeviceChoice};
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    Detector::new(common::tiny_detector_config(), pre.clone(), &device, 1).unwrap()
}

/// Resuming from a checkpoint continues the run exactly (weights and Adam's moments), and
/// an interrupted save leaves the previous checkpoint the latest.
#[test]
fn checkpoints_resume_exactly_and_survive_an_interrupted_save() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::checkpoint;
    use lungcad::train::loss::LossConfig;
    use lungcad::train::sampler::{make_sample, SampleSpec, SamplerConfig};
    use lungcad::train::Trainer;
    let s = scan();
    let detector = tiny_detector(s.data.config());
    let batch: Vec<_> = (0..2)
        .map(|i| {
            let spec = SampleSpec {
                scan: 0,
                nodule: (i == 0).then_some(0),
                seed: i,
            };
            make_sample(
                &s,
                &spec,
                [32; 3],
                &HeadLayout::default(),
                &SamplerConfig::default(),
            )
            .unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("checkpoints");
    assert!(checkpoint::latest(&ckpts).unwrap().is_none());

    let mut t = Trainer::new(&detector, LossConfig::default(), &Default::default());
    for _ in 0..3 {
        t.step(&batch, 3e-3).unwrap();
    }
    t.save_checkpoint(&ckpts, "step-3", &serde_json::json!({"step": 3}))
        .unwrap();
    let after: Vec<f64> = (0..2)
        .map(|_| t.step(&batch, 3e-3).unwrap().total)
        .collect();

    let (device, _) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu).unwrap();
    let (mut r, state) =
        Trainer::resume(&ckpts, &device, LossConfig::default(), &Default::default())
            .unwrap()
            .unwrap();
    assert_eq!(state["step"], 3);
    let resumed: Vec<f64> = (0..2)
        .map(|_| r.step(&batch, 3e-3).unwrap().total)
        .collect();
    println!("uninterrupted {after:?}, resumed {resumed:?}");
    assert_eq!(after, resumed, "resume continues the run exactly");

    // The optimiser state matters: the same weights with a fresh Adam go elsewhere.
    let folder = checkpoint::latest(&ckpts).unwrap().unwrap();
    let weights_only =
        lungcad::model::Detector::load(folder.join(checkpoint::MODEL_FILE), &device).unwrap();
    let mut fresh = Trainer::new(&weights_only, LossConfig::default(), &Default::default());
    let first = fresh.step(&batch, 3e-3).unwrap().total;
    let second = fresh.step(&batch, 3e-3).unwrap().total;
    assert_eq!(first, after[0], "the same weights give the same loss");
    assert_ne!(
        second, after[1],
        "without Adam's moments the second step differs"
    );

    // A save interrupted before its rename: a partial temporary folder and pointer.
    std::fs::create_dir_all(ckpts.join(".tmp-step-5")).unwrap();
    std::fs::write(
        ckpts.join(".tmp-step-5").join(checkpoint::MODEL_FILE),
        b"trunc",
    )
    .unwrap();
    std::fs::write(ckpts.join(".latest.tmp"), b"step-").unwrap();
    assert_eq!(checkpoint::latest(&ckpts).unwrap().unwrap(), folder);
    assert!(
        Trainer::resume(&ckpts, &device, LossConfig::default(), &Default::default())
            .unwrap()
            .is_some()
    );
    // The next save cleans up and moves the pointer.
    t.save_checkpoint(&ckpts, "step-5", &serde_json::json!({"step": 5}))
        .unwrap();
    assert_eq!(
        checkpoint::latest(&ckpts).unwrap().unwrap(),
        ckpts.join("step-5")
    );
    // A pointer to an incomplete folder is a clear error, not a panic.
    std::fs::remove_file(ckpts.join("step-5").join(checkpoint::OPTIMIZER_FILE)).unwrap();
    let e = checkpoint::latest(&ckpts).unwrap_err();
    assert_eq!(e.category(), "checkpoint");
    assert!(e.to_string().contains("optimizer.bpk"), "{e}");
}

#[test]
fn datasets_are_found_in_luna16_tianchi_and_dicom_layouts() {
    use lungcad::eval::{Annotations, Finding};
    use lungcad::io::dicom::{write_series, SeriesWriteOptions};
    use lungcad::train::dataset::find_scans;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let small = |origin: f64| {
        let hu = ndarray::Array3::<i16>::from_elem((4, 8, 8), -1000);
        lungcad::Volume::new(hu, Geometry::new([2.0, 1.0, 1.0], [origin, 0.0, 0.0])).unwrap()
    };
    std::fs::create_dir_all(root.join("subset0")).unwrap();
    std::fs::create_dir_all(root.join("tianchi/train")).unwrap();
    lungcad::save(&small(0.0), root.join("subset0/1.2.3.mhd")).unwrap();
    lungcad::save(&small(1.0), root.join("tianchi/train/LKDS-00001.mhd")).unwrap();
    lungcad::save(&small(2.0), root.join("subset0/4.5.6.nii.gz")).unwrap();
    write_series(
        &small(3.0),
        &root.join("dicom/patient/series"),
        &SeriesWriteOptions {
            series_uid: Some("1.2.826.0.1.99".into()),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(root.join("README.txt"), "a dataset").unwrap();
    let finding = |uid: &str, x: f64| Finding {
        seriesuid: uid.into(),
        coord_x: x,
        coord_y: 1.0,
        coord_z: 2.0,
        diameter_mm: Some(6.0),
    };
    let ann = Annotations::from_findings(vec![
        finding("1.2.3", 1.0),
        finding("1.2.3", 2.0),
        finding("LKDS-00001", 3.0),
        finding("1.2.826.0.1.99", 4.0),
        finding("9.9.9", 5.0),
    ]);
    let ex = Annotations::from_findings(vec![finding("4.5.6", 6.0)]);
    let (scans, missing) =
        find_scans(root, &ann, Some(&ex), &lungcad::LoadConfig::default()).unwrap();
    let uids: Vec<&str> = scans.iter().map(|s| s.series_uid.as_str()).collect();
    assert_eq!(uids, ["1.2.3", "1.2.826.0.1.99", "4.5.6", "LKDS-00001"]);
    assert_eq!(missing, ["9.9.9"]);
    let by = |u: &str| scans.iter().find(|s| s.series_uid == u).unwrap();
    assert_eq!(by("1.2.3").nodules.len(), 2);
    assert!(by("4.5.6").nodules.is_empty() && by("4.5.6").excluded.len() == 1);
    let d = by("1.2.826.0.1.99");
    assert!(d.dicom && d.path.ends_with("dicom/patient/series"));
    // Each loads as the scan it names.
    for s in &scans {
        let v = lungcad::load(&s.path, &s.load_config(&lungcad::LoadConfig::default())).unwrap();
        assert_eq!(v.shape(), [4, 8, 8], "{}", s.series_uid);
    }
    // A series in two places is refused.
    lungcad::save(&small(5.0), root.join("tianchi/1.2.3.mha")).unwrap();
    let e = find_scans(root, &ann, None, &lungcad::LoadConfig::default()).unwrap_err();
    assert!(e.to_string().contains("1.2.3"), "{e}");
}

/// Batches made ahead on worker threads are the batches made one sample at a time.
#[test]
fn prefetched_batches_match_sequential_ones() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::sampler::{for_each_batch, make_sample, plan_epoch, SamplerConfig};
    let scans = vec![scan()];
    let cfg = SamplerConfig::default();
    let head = HeadLayout::default();
    let plan = plan_epoch(&scans, 10, 0, 9, &cfg).unwrap();
    let mut got = Vec::new();
    for_each_batch(&scans, &plan, 4, [32; 3], &head, &cfg, 2, |i, batch| {
        assert_eq!(batch.len(), if i < 2 { 4 } else { 2 });
        got.extend(batch);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 10);
    for (spec, sample) in plan.iter().zip(&got) {
        let expect = make_sample(&scans[0], spec, [32; 3], &head, &cfg).unwrap();
        assert_eq!(sample.image, expect.image);
        assert_eq!(sample.targets, expect.targets);
    }
    // A consumer error stops the pipeline and comes back.
    let e = for_each_batch(&scans, &plan, 4, [32; 3], &head, &cfg, 2, |_, _| {
        Err(lungcad::Error::InvalidArgument("stop".into()))
    })
    .unwrap_err();
    assert!(e.to_string().contains("stop"));
}

/// The same seed on the CPU gives the same losses: same weights, same patches, same steps.
#[test]
fn the_same_seed_gives_the_same_losses() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::loss::LossConfig;
    use lungcad::train::sampler::{for_each_batch, plan_epoch, SamplerConfig};
    use lungcad::train::Trainer;
    let scans = vec![scan()];
    let run = |seed: u64| {
        let detector = tiny_detector(scans[0].data.config());
        let cfg = SamplerConfig::default();
        let plan = plan_epoch(&scans, 8, 0, seed, &cfg).unwrap();
        let mut t = Trainer::new(&detector, LossConfig::default(), &Default::default());
        let mut losses = Vec::new();
        for_each_batch(
            &scans,
            &plan,
            4,
            [32; 3],
            &HeadLayout::default(),
            &cfg,
            1,
            |_, b| {
                losses.push(t.step(&b, 1e-3)?.total);
                Ok(())
            },
        )
        .unwrap();
        losses
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6), "another seed draws other patches");
}

/// `cut_patch` (tabulated, separable reads) against a plain per-voxel trilinear loop over
/// the grid, for random flips, turns, scales and fractional centres.
#[test]
fn cut_patch_matches_a_plain_trilinear_loop() {
    let (pre, nodule) = phantom();
    let w = &pre.config.window;
    let pad = w.normalize(pre.config.patch.pad_hu);
    let shape = pre.shape();
    let at = |z: i64, y: i64, x: i64| -> f32 {
        if z < 0
            || y < 0
            || x < 0
            || z >= shape[0] as i64
            || y >= shape[1] as i64
            || x >= shape[2] as i64
        {
            return pad;
        }
        let i = [z as usize, y as usize, x as usize];
        w.value(pre.volume.hu[i], pre.lung.mask[i] != 0)
    };
    let mut rng = lungcad::rng::SplitMix64::new(3);
    let size = [20, 24, 24];
    for k in 0..12 {
        // Centres near the nodule and near the grid's corner (padding).
        let base = if k % 2 == 0 {
            nodule.centre_vox
        } else {
            [2.0, 3.0, 1.0]
        };
        let centre = base.map(|v| v + rng.uniform() * 3.0 - 1.5);
        let t = PatchTransform::draw(centre, size, [2.0; 3], &AugmentConfig::default(), &mut rng);
        let fast = cut_patch(&pre, &t).unwrap();
        let mut worst = 0.0f32;
        for ((oz, oy, ox), &v) in fast.indexed_iter() {
            let g = t.to_grid([oz as f64, oy as f64, ox as f64]);
            let f = g.map(f64::floor);
            let r = [0, 1, 2].map(|a| (g[a] - f[a]) as f32);
            let b = f.map(|v| v as i64);
            let mut acc = 0.0f32;
            for (dz, dy, dx) in (0..8).map(|c| (c >> 2 & 1, c >> 1 & 1, c & 1)) {
                let wz = if dz == 0 { 1.0 - r[0] } else { r[0] };
                let wy = if dy == 0 { 1.0 - r[1] } else { r[1] };
                let wx = if dx == 0 { 1.0 - r[2] } else { r[2] };
                acc += wz * wy * wx * at(b[0] + dz, b[1] + dy, b[2] + dx);
            }
            worst = worst.max((acc - v).abs());
        }
        assert!(worst < 1e-5, "draw {k}: {t:?}: max |difference| {worst}");
    }
}

/// The child process of `a_process_killed_while_saving_leaves_a_loadable_checkpoint`: saves
/// checkpoints in a loop until killed. Does nothing when run on its own.
#[test]
#[ignore = "run by a_process_killed_while_saving_leaves_a_loadable_checkpoint"]
fn checkpoint_writer_child() {
    use lungcad::train::loss::LossConfig;
    use lungcad::train::Trainer;
    let Ok(dir) = std::env::var("LUNGCAD_CHECKPOINT_CHILD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let (pre, _) = phantom();
    let t = Trainer::new(
        &tiny_detector(&pre.config),
        LossConfig::default(),
        &Default::default(),
    );
    for i in 0u64.. {
        t.save_checkpoint(
            &dir,
            &format!("save-{:04}", i % 3),
            &serde_json::json!({ "save": i }),
        )
        .unwrap();
    }
}

/// A real kill (SIGKILL on Unix) of a process that is saving checkpoints in a loop, at
/// several moments: whatever it was doing, the latest checkpoint loads and resumes.
#[test]
fn a_process_killed_while_saving_leaves_a_loadable_checkpoint() {
    use lungcad::train::checkpoint;
    use lungcad::train::loss::LossConfig;
    use lungcad::train::Trainer;
    let exe = std::env::current_exe().unwrap();
    let (device, _) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu).unwrap();
    let mut saves_seen = Vec::new();
    for (round, wait_ms) in [400u64, 530, 610, 770, 890, 1130].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "checkpoint_writer_child",
                "--test-threads",
                "1",
            ])
            .env("LUNGCAD_CHECKPOINT_CHILD_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first complete checkpoint, then a while more, then kill.
        let t0 = std::time::Instant::now();
        while checkpoint::latest(dir.path()).ok().flatten().is_none() {
            assert!(
                t0.elapsed().as_secs() < 120,
                "round {round}: no checkpoint written"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let (_, state) = Trainer::resume(
            dir.path(),
            &device,
            LossConfig::default(),
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"))
        .unwrap_or_else(|| panic!("round {round}: no checkpoint"));
        saves_seen.push(state["save"].as_u64().unwrap());
    }
    println!("killed after saves {saves_seen:?}");
    assert!(
        saves_seen.iter().any(|&s| s > 0),
        "the child saved more than once"
    );
}

fn dataset(dir: &std::path::Path, cache: &std::path::Path) -> lungcad::train::run::Dataset {
    let ann = lungcad::eval::Annotations::from_csv(dir.join("annotations.csv")).unwrap();
    let load = lungcad::LoadConfig::default();
    let (scans, missing) = lungcad::train::dataset::find_scans(dir, &ann, None, &load).unwrap();
    assert!(missing.is_empty());
    lungcad::train::run::Dataset {
        scans,
        load,
        cache_dir: cache.to_path_buf(),
    }
}

/// Patches read from the on-disk cache are the in-memory patches, bit for bit; the cache is
/// reused, rebuilt when its source or file changes, and versioned by the config.
#[test]
fn the_cache_gives_the_same_patches_and_is_rebuilt_when_stale() {
    use lungcad::detect::HeadLayout;
    use lungcad::train::cache::ScanCache;
    use lungcad::train::sampler::{make_sample, plan_epoch, SamplerConfig, ScanData, TrainScan};
    let dir = tempfile::tempdir().unwrap();
    common::phantom_dataset(dir.path(), 1);
    let data = dataset(dir.path(), &dir.path().join("cache"));
    let src = &data.scans[0];
    let config = common::tiny_preprocess_config();
    let cache = ScanCache::open(&data.cache_dir, &config).unwrap();
    let (cached, now) = cache.prepare(src, &data.load).unwrap();
    assert!(now);
    let (again, now) = cache.prepare(src, &data.load).unwrap();
    assert!(!now, "a prepared scan is read back, not made again");

    let v = lungcad::load(&src.path, &data.load).unwrap();
    let pre = preprocess(&v, &config, &Limits::default()).unwrap();
    let back = again.load().unwrap();
    assert_eq!(back.volume.hu, pre.volume.hu);
    assert_eq!(back.lung.mask, pre.lung.mask);
    assert_eq!(back.crop, pre.crop);
    assert_eq!(back.geometry(), pre.geometry());

    let memory = vec![TrainScan::new(
        &src.series_uid,
        ScanData::Memory(pre),
        &src.nodules,
    )];
    let disk = [TrainScan::new(
        &src.series_uid,
        ScanData::Cached(cached),
        &src.nodules,
    )];
    let cfg = SamplerConfig::default();
    let head = HeadLayout::default();
    // Positives and negatives, augmented, some reaching beyond the grid.
    for spec in plan_epoch(&memory, 24, 1, 3, &cfg).unwrap() {
        let a = make_sample(&memory[0], &spec, [32; 3], &head, &cfg).unwrap();
        let b = make_sample(&disk[0], &spec, [32; 3], &head, &cfg).unwrap();
        assert_eq!(a.image, b.image, "{spec:?}");
        assert_eq!(a.targets, b.targets, "{spec:?}");
    }
    // Patches reaching beyond every edge of the grid: low z, low y and high x, then high z,
    // high y and low x (scaled and turned).
    let shape = match &memory[0].data {
        ScanData::Memory(p) => p.shape(),
        ScanData::Cached(_) => unreachable!(),
    };
    let corner = lungcad::train::augment::PatchTransform::identity(
        [-10.0, 3.0, shape[2] as f64 - 6.0],
        [32; 3],
    );
    let far_corner = lungcad::train::augment::PatchTransform {
        perm: [0, 2, 1],
        sign: [1.0, -1.0, 1.0],
        scale: 0.9,
        ..lungcad::train::augment::PatchTransform::identity(
            [shape[0] as f64 + 5.5, shape[1] as f64 + 4.25, -6.0],
            [32; 3],
        )
    };
    for t in [corner, far_corner] {
        let (ScanData::Cached(c), ScanData::Memory(p)) = (&disk[0].data, &memory[0].data) else {
            unreachable!()
        };
        let from_disk = c.cut_patch(&t).unwrap();
        let in_memory = lungcad::train::augment::cut_patch(p, &t).unwrap();
        let same = from_disk
            .iter()
            .zip(in_memory.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{t:?}");
    }

    // A truncated cache file is made again; so is one whose source changed.
    let file = again.path().to_path_buf();
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let e = lungcad::train::cache::CachedScan::open(&file).unwrap_err();
    assert_eq!(e.category(), "cache", "{e}");
    assert!(cache.prepare(src, &data.load).unwrap().1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let raw = src.path.with_extension("raw");
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::write(&raw, &bytes).unwrap();
    std::fs::write(&src.path, std::fs::read(&src.path).unwrap()).unwrap();
    assert!(
        cache.prepare(src, &data.load).unwrap().1,
        "source rewritten"
    );
    // Another config, another folder.
    let mut other = config.clone();
    other.crop_margin_mm = 4.0;
    let other = ScanCache::open(&data.cache_dir, &other).unwrap();
    assert_ne!(other.dir(), cache.dir());
    assert!(other.prepare(src, &data.load).unwrap().1);
}

/// A DICOM scan is cached by its folder's path and the DICOM loader's revision: a file made
/// by a build whose loader read the same files as another volume (no revision in its
/// header) is prepared again.
#[test]
fn a_dicom_scan_cached_by_another_loader_revision_is_prepared_again() {
    use lungcad::io::dicom::{write_series, SeriesWriteOptions};
    use lungcad::train::cache::ScanCache;
    let dir = tempfile::tempdir().unwrap();
    common::phantom_dataset(dir.path(), 1);
    let data = dataset(dir.path(), &dir.path().join("cache"));
    let volume = lungcad::load(&data.scans[0].path, &data.load).unwrap();
    let uid = "1.2.826.0.1.55";
    let folder = dir.path().join("dicom");
    let opts = SeriesWriteOptions {
        series_uid: Some(uid.into()),
        ..Default::default()
    };
    write_series(&volume, &folder, &opts).unwrap();
    let src = lungcad::train::dataset::ScanSource {
        series_uid: uid.into(),
        path: folder,
        dicom: true,
        nodules: Vec::new(),
        excluded: Vec::new(),
    };
    let cache = ScanCache::open(&data.cache_dir, &common::tiny_preprocess_config()).unwrap();
    let (cached, now) = cache.prepare(&src, &data.load).unwrap();
    assert!(now);
    assert!(!cache.prepare(&src, &data.load).unwrap().1);
    // The header as a build before the revision wrote it: its source stamp has no
    // `dicom_loader`.
    let file = cached.path().to_path_buf();
    let bytes = std::fs::read(&file).unwrap();
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + len]).unwrap();
    let stamp = header["source"].as_object_mut().unwrap();
    assert_eq!(
        stamp.remove("dicom_loader"),
        Some(lungcad::io::dicom::LOADER_REVISION.into())
    );
    let json = serde_json::to_vec(&header).unwrap();
    let mut old = bytes[..8].to_vec();
    old.extend_from_slice(&(json.len() as u64).to_le_bytes());
    old.extend_from_slice(&json);
    old.extend_from_slice(&bytes[16 + len..]);
    std::fs::write(&file, old).unwrap();
    lungcad::train::cache::CachedScan::open(&file).expect("an older file still opens");
    assert!(cache.prepare(&src, &data.load).unwrap().1, "prepared again");
    assert!(!cache.prepare(&src, &data.load).unwrap().1);
}

fn tiny_run_config(epochs: usize) -> lungcad::train::run::TrainConfig {
    use lungcad::train::optim::ScheduleConfig;
    use lungcad::train::run::TrainConfig;
    let mut c = TrainConfig {
        epochs,
        batch_size: 4,
        micro_batch_size: Some(2),
        patches_per_epoch: Some(24),
        seed: 9,
        detector: common::tiny_detector_config(),
        preprocess: common::tiny_preprocess_config(),
        schedule: ScheduleConfig::constant(5e-3),
        ..TrainConfig::default()
    };
    c.validation.fraction = 0.34;
    c
}

fn epoch_losses(out: &std::path::Path) -> Vec<f64> {
    use lungcad::train::run::{read_metrics, Record};
    read_metrics(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s.loss.total),
            Record::Epoch(_) => None,
        })
        .collect()
}

/// A short run on phantoms on the CPU lowers the loss, validates, writes checkpoints, the
/// best and final models, the metrics and the curves; the same seed gives the same losses,
/// and a run stopped after two epochs and resumed ends exactly where the uninterrupted run
/// does.
#[test]
fn a_short_run_learns_and_resumes_exactly() {
    use lungcad::model::{select_device, Detector, DeviceChoice};
    use lungcad::train::run::{train, Event};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    common::phantom_dataset(&data_dir, 3);
    let data = dataset(&data_dir, &dir.path().join("cache"));
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();

    let full = dir.path().join("full");
    let mut prepared_now = 0;
    let mut validations = 0;
    let summary = train(
        &tiny_run_config(4),
        &data,
        &full,
        &device,
        false,
        &mut |e| match e {
            Event::Prepared {
                prepared_now: true, ..
            } => prepared_now += 1,
            Event::Epoch(e) => validations += e.validation.is_some() as usize,
            _ => {}
        },
    )
    .unwrap();
    assert_eq!(prepared_now, 3, "each scan preprocessed once");
    assert_eq!(validations, 4);
    let losses = epoch_losses(&full);
    println!("losses: {losses:.3?}");
    assert_eq!(losses.len(), 24, "4 epochs of 6 steps");
    let first = losses[..6].iter().sum::<f64>() / 6.0;
    let last = losses[18..].iter().sum::<f64>() / 6.0;
    assert!(last < 0.7 * first, "loss {first:.3} -> {last:.3}");
    let last_epoch = summary.last_epoch.clone().unwrap();
    let v = last_epoch.validation.unwrap();
    assert_eq!((v.scans, v.nodules), (1, 1));
    assert!(v.cpm.is_some_and(|c| (0.0..=1.0).contains(&c)));
    for f in [
        "train_config.json",
        "split.json",
        "curves.png",
        "model.safetensors",
    ] {
        assert!(full.join(f).is_file(), "{f}");
    }
    assert!(Detector::load(&summary.final_model, &device).is_ok());
    if let Some((best, _, _)) = &summary.best {
        assert!(Detector::load(best, &device).is_ok());
    }
    // Two checkpoints kept: epochs 3 and 4.
    let mut kept: Vec<String> = std::fs::read_dir(full.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["epoch-0003", "epoch-0004"]);

    // Stopped after 2 epochs (as if killed after the second checkpoint, with a partial
    // third epoch in the log), then resumed to 4: the same losses, bit for bit.
    let part = dir.path().join("part");
    train(
        &tiny_run_config(2),
        &data,
        &part,
        &device,
        false,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(epoch_losses(&part), losses[..12]);
    let mut log = std::fs::read_to_string(part.join("metrics.jsonl")).unwrap();
    log += "{\"kind\":\"step\",\"epoch\":3,\"step\":13,\"lr\":0.003,\"loss\":{\"positive\":1,\"negative\":1,\"regression\":1,\"total\":9,\"positives\":1},\"patches\":4,\"step_s\":1,\"data_wait_s\":0}\n";
    std::fs::write(part.join("metrics.jsonl"), log).unwrap();
    let again = train(
        &tiny_run_config(4),
        &data,
        &part,
        &device,
        false,
        &mut |_| {},
    );
    assert!(
        again.is_err(),
        "a run folder is not overwritten without resume"
    );
    let mut prepared_now = 0;
    train(&tiny_run_config(4), &data, &part, &device, true, &mut |e| {
        if let Event::Prepared {
            prepared_now: true, ..
        } = e
        {
            prepared_now += 1
        }
    })
    .unwrap();
    assert_eq!(prepared_now, 0, "the cache is shared");
    assert_eq!(epoch_losses(&part), losses);
    // Resuming on another dataset (one scan fewer) is refused.
    let fewer = lungcad::train::run::Dataset {
        scans: data.scans[..2].to_vec(),
        load: data.load.clone(),
        cache_dir: data.cache_dir.clone(),
    };
    let e = train(
        &tiny_run_config(5),
        &fewer,
        &part,
        &device,
        true,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
    // Resuming with another config is refused.
    let mut other = tiny_run_config(5);
    other.seed = 10;
    let e = train(&other, &data, &part, &device, true, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("another config"), "{e}");
}

/// Micro-batch losses add up to the batch's loss (gradient accumulation normalises over the
/// whole batch).
#[test]
fn micro_batch_losses_sum_to_the_batch_loss() {
    use burn::prelude::{Tensor, TensorData};
    use lungcad::detect::HeadLayout;
    use lungcad::train::loss::{detection_loss, micro_batch_loss, BatchCounts, LossConfig};
    use lungcad::train::sampler::{make_sample, plan_epoch, SamplerConfig};
    let s = scan();
    let scans = vec![s];
    let cfg = SamplerConfig::default();
    let head = HeadLayout::default();
    let samples: Vec<_> = plan_epoch(&scans, 4, 0, 5, &cfg)
        .unwrap()
        .iter()
        .map(|spec| make_sample(&scans[0], spec, [32; 3], &head, &cfg).unwrap())
        .collect();
    let (device, _) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu).unwrap();
    let [c, d, h, w] = [15, 8, 8, 8];
    let mut rng = lungcad::rng::SplitMix64::new(3);
    let values: Vec<f32> = (0..4 * c * d * h * w)
        .map(|_| (rng.uniform() * 4.0 - 2.0) as f32)
        .collect();
    let output = |from: usize, n: usize| {
        let per = c * d * h * w;
        Tensor::<5>::from_data(
            TensorData::new(
                values[from * per..(from + n) * per].to_vec(),
                [n, c, d, h, w],
            ),
            &device,
        )
    };
    let config = LossConfig::default();
    let whole = detection_loss(output(0, 4), samples.iter().map(|s| &s.targets), &config).unwrap();
    let counts = BatchCounts::of(samples.iter().map(|s| &s.targets), &config);
    assert!(counts.positives > 0);
    let mut sum = lungcad::train::loss::LossParts::default();
    for k in [0, 2] {
        let part = micro_batch_loss(
            output(k, 2),
            samples[k..k + 2].iter().map(|s| &s.targets),
            &config,
            &counts,
        )
        .unwrap();
        sum += part.parts;
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    assert!(
        close(sum.total, whole.parts.total),
        "{sum:?} vs {:?}",
        whole.parts
    );
    assert!(close(sum.positive, whole.parts.positive));
    assert!(close(sum.negative, whole.parts.negative));
    assert!(close(sum.regression, whole.parts.regression));
    assert_eq!(sum.positives, whole.parts.positives);
}
