//! Training the detector in Rust: datasets ([`dataset`]) prepared once into an on-disk
//! cache ([`cache`]), augmented, size-balanced patches ([`sampler`], [`augment`]), the
//! detection loss with hard-negative mining ([`loss`]), Adam or SGD with a schedule
//! ([`optim`]), the optimisation step with gradient accumulation and checkpoints that
//! survive a kill ([`Trainer`], [`checkpoint`]), and the epoch loop with validation (CPM)
//! that `lungcad train` runs ([`run`]). See docs/TRAINING.md.

pub mod augment;
pub mod cache;
pub mod checkpoint;
pub mod curves;
pub mod dataset;
pub mod loss;
pub mod optim;
pub mod run;
pub mod sampler;

use crate::error::{Error, Result};
use crate::model::{Detector, DetectorNet, Device};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::{Tensor, TensorData};
use loss::{micro_batch_loss, BatchCounts, LossConfig, LossParts};
use optim::OptimizerConfig;
use sampler::TrainSample;

/// A network being trained: its parameters on an autodiff device and the optimiser state.
pub struct Trainer {
    net: DetectorNet,
    optim: burn::optim::ModuleOptimizer,
    device: Device,
    loss: LossConfig,
    template: Detector,
}

impl Trainer {
    /// Starts training `detector`'s weights on its device with a fresh `optimizer`.
    pub fn new(detector: &Detector, loss: LossConfig, optimizer: &OptimizerConfig) -> Self {
        let device = detector.device().clone().autodiff();
        let net = detector.net.clone().fork(&device).train();
        Trainer {
            net,
            optim: optimizer.init(),
            device,
            loss,
            template: detector.clone(),
        }
    }

    /// One optimisation step on `samples` (one batch) at learning rate `lr`; returns the
    /// loss of the batch before the step.
    pub fn step(&mut self, samples: &[TrainSample], lr: f64) -> Result<LossParts> {
        self.step_accumulated(samples, lr, samples.len())
    }

    /// One optimisation step on the batch `samples`, run through the network
    /// `micro_batch` patches at a time with the gradients summed (gradient accumulation:
    /// the memory of a micro-batch, the step of the whole batch). The loss is normalised
    /// over the whole batch, so the summed gradient is the batch's; only batch
    /// normalisation differs, its statistics being those of each micro-batch. A
    /// micro-batch is never larger than the device holds ([`Detector::max_batch`]).
    pub fn step_accumulated(
        &mut self,
        samples: &[TrainSample],
        lr: f64,
        micro_batch: usize,
    ) -> Result<LossParts> {
        if micro_batch == 0 {
            return Err(Error::InvalidArgument(
                "micro-batch size must be at least 1".into(),
            ));
        }
        let Some(first) = samples.first() else {
            return Err(Error::InvalidArgument("an empty batch".into()));
        };
        let (d, h, w) = first.image.dim();
        if samples.iter().any(|s| s.image.dim() != (d, h, w)) {
            return Err(Error::InvalidArgument(
                "the patches of a batch differ in size".into(),
            ));
        }
        let micro_batch = self.template.fit_batch(micro_batch, [d, h, w])?;
        let counts = BatchCounts::of(samples.iter().map(|s| &s.targets), &self.loss);
        let mut parts = LossParts::default();
        let mut accumulated = GradientsAccumulator::<DetectorNet>::new();
        for chunk in samples.chunks(micro_batch) {
            let x = Tensor::<5>::from_data(
                TensorData::new(sampler::stack_images(chunk), [chunk.len(), 1, d, h, w]),
                &self.device,
            );
            let out = self.net.forward(x);
            let loss =
                micro_batch_loss(out, chunk.iter().map(|s| &s.targets), &self.loss, &counts)?;
            let grads = GradientsParams::from_grads(loss.total.backward(), &self.net);
            accumulated.accumulate(&self.net, grads);
            parts += loss.parts;
        }
        self.net = self.optim.step(lr, self.net.clone(), accumulated.grads());
        Ok(parts)
    }

    /// Saves the network, the optimiser state and `state` (the caller's: epoch, RNG,
    /// metrics) as checkpoint `name` in `dir`, atomically (see [`checkpoint`]).
    pub fn save_checkpoint(
        &self,
        dir: &std::path::Path,
        name: &str,
        state: &serde_json::Value,
    ) -> Result<std::path::PathBuf> {
        let detector = self.detector();
        checkpoint::save_atomically(dir, name, |tmp| {
            detector.save(tmp.join(checkpoint::MODEL_FILE))?;
            let opt = tmp.join(checkpoint::OPTIMIZER_FILE);
            self.optim.save(&opt).map_err(|e| Error::Checkpoint {
                path: opt.clone(),
                message: format!("writing the optimiser state: {e}"),
            })?;
            let text = serde_json::to_string_pretty(state)
                .map_err(|e| Error::InvalidArgument(format!("checkpoint state: {e}")))?;
            // Synced with the folder's other files by save_atomically.
            let state = tmp.join(checkpoint::STATE_FILE);
            std::fs::write(&state, text).map_err(|e| Error::io(&state, e))
        })
    }

    /// Continues from the latest checkpoint in `dir` on `device` (with the optimiser it was
    /// saved with): the trainer and the state saved with it, or `None` when `dir` has no
    /// checkpoint.
    pub fn resume(
        dir: &std::path::Path,
        device: &Device,
        loss: LossConfig,
        optimizer: &OptimizerConfig,
    ) -> Result<Option<(Trainer, serde_json::Value)>> {
        let Some(folder) = checkpoint::latest(dir)? else {
            return Ok(None);
        };
        let detector = Detector::load(folder.join(checkpoint::MODEL_FILE), device)?;
        let mut trainer = Trainer::new(&detector, loss, optimizer);
        let opt = folder.join(checkpoint::OPTIMIZER_FILE);
        trainer.optim = optimizer.init().load(&opt).map_err(|e| Error::Checkpoint {
            path: opt.clone(),
            message: format!("reading the optimiser state: {e}"),
        })?;
        let state_path = folder.join(checkpoint::STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: state_path.clone(),
            message: format!("state is not JSON: {e}"),
        })?;
        Ok(Some((trainer, state)))
    }

    /// The network as trained so far, as a detector for inference (batch norm on its
    /// running statistics).
    pub fn detector(&self) -> Detector {
        self.template.with_net(self.net.valid())
    }
}
