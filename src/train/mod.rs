//! Training the detector in Rust (issue 6, being built): augmented, size-balanced patches
//! ([`sampler`], [`augment`]), the detection loss with hard-negative mining ([`loss`]) and
//! the optimisation step ([`Trainer`]). Datasets, the on-disk cache, checkpoints and
//! `lungcad train` come next.

pub mod augment;
pub mod loss;
pub mod sampler;

use crate::error::{Error, Result};
use crate::model::{Detector, DetectorNet, Device};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::{Tensor, TensorData};
use loss::{detection_loss, LossConfig, LossParts};
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
    /// Starts training `detector`'s weights on its device with Adam.
    pub fn new(detector: &Detector, loss: LossConfig) -> Self {
        let device = detector.device().clone().autodiff();
        let net = detector.net.clone().fork(&device).train();
        Trainer {
            net,
            optim: AdamConfig::new().init(),
            device,
            loss,
            template: detector.clone(),
        }
    }

    /// One optimisation step on `samples` (one batch) at learning rate `lr`; returns the
    /// loss of the batch before the step.
    pub fn step(&mut self, samples: &[TrainSample], lr: f64) -> Result<LossParts> {
        let Some(first) = samples.first() else {
            return Err(Error::InvalidArgument("an empty batch".into()));
        };
        let (d, h, w) = first.image.dim();
        if samples.iter().any(|s| s.image.dim() != (d, h, w)) {
            return Err(Error::InvalidArgument(
                "the patches of a batch differ in size".into(),
            ));
        }
        let x = Tensor::<5>::from_data(
            TensorData::new(sampler::stack_images(samples), [samples.len(), 1, d, h, w]),
            &self.device,
        );
        let targets: Vec<_> = samples.iter().map(|s| s.targets.clone()).collect();
        let out = self.net.forward(x);
        let loss = detection_loss(out, &targets, &self.loss)?;
        let grads = GradientsParams::from_grads(loss.total.backward(), &self.net);
        self.net = self.optim.step(lr, self.net.clone(), grads);
        Ok(loss.parts)
    }

    /// The network as trained so far, as a detector for inference (batch norm on its
    /// running statistics).
    pub fn detector(&self) -> Detector {
        self.template.with_net(self.net.valid())
    }
}
