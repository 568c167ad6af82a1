//! Optimisers and the learning-rate schedule.

use crate::error::{Error, Result};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

/// The optimiser. Default: Adam (β 0.9, 0.999) without weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam; `weight_decay` is an L2 penalty added to the gradient.
    Adam { weight_decay: f64 },
    /// SGD with (PyTorch-style, undampened) momentum, as grt123 trained: momentum 0.9,
    /// weight decay 1e-4, learning rate 0.01.
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam { weight_decay: 0.0 }
    }
}

impl OptimizerConfig {
    /// grt123's SGD settings.
    pub fn sgd() -> Self {
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (wd, momentum) = match self {
            OptimizerConfig::Adam { weight_decay } => (*weight_decay, 0.0),
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => (*weight_decay, *momentum),
        };
        if !(wd.is_finite() && wd >= 0.0 && (0.0..1.0).contains(&momentum)) {
            return Err(Error::InvalidArgument(format!(
                "optimizer {self:?}: weight decay must be >= 0 and momentum in [0, 1)"
            )));
        }
        Ok(())
    }

    /// A fresh optimiser (no state).
    pub fn init(&self) -> ModuleOptimizer {
        let decay = |wd: f64| (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32));
        match self {
            OptimizerConfig::Adam { weight_decay } => AdamConfig::new()
                .with_weight_decay(decay(*weight_decay))
                .init(),
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => SgdConfig::new()
                .with_momentum((*momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(*momentum)
                        .with_dampening(0.0)
                        .with_nesterov(*nesterov)
                }))
                .with_weight_decay(decay(*weight_decay))
                .init(),
        }
    }
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decay {
    Constant,
    /// Multiplied by `factor` at each of `at` (fractions of the run's steps), as grt123
    /// (0.1 at half the run and again at 80 %).
    Step {
        at: Vec<f64>,
        factor: f64,
    },
    /// Cosine from the peak down to `final_fraction` of it at the last step.
    Cosine {
        final_fraction: f64,
    },
}

/// The learning rate over a run: a linear warm-up from 0 over `warmup_steps`, then `decay`
/// from `lr`. Default: 1e-3, 100 warm-up steps, step decay by 0.1 at 50 % and 80 %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            lr: 1e-3,
            warmup_steps: 100,
            decay: Decay::Step {
                at: vec![0.5, 0.8],
                factor: 0.1,
            },
        }
    }
}

impl ScheduleConfig {
    /// A constant rate, no warm-up.
    pub fn constant(lr: f64) -> Self {
        ScheduleConfig {
            lr,
            warmup_steps: 0,
            decay: Decay::Constant,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr > 0.0
            && match &self.decay {
                Decay::Constant => true,
                Decay::Step { at, factor } => {
                    factor.is_finite()
                        && *factor > 0.0
                        && at.iter().all(|f| (0.0..=1.0).contains(f))
                }
                Decay::Cosine { final_fraction } => (0.0..=1.0).contains(final_fraction),
            };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "learning-rate schedule {self:?}: lr must be positive, step fractions and the \
                 final fraction within [0, 1], the factor positive"
            )));
        }
        Ok(())
    }

    /// The rate of step `step` (0-based) of a run of `total_steps`.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let progress = step as f64 / total_steps.max(1) as f64;
        match &self.decay {
            Decay::Constant => self.lr,
            Decay::Step { at, factor } => {
                self.lr * factor.powi(at.iter().filter(|&&f| progress >= f).count() as i32)
            }
            Decay::Cosine { final_fraction } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                self.lr * (final_fraction + (1.0 - final_fraction) * cos)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_and_decay() {
        let s = ScheduleConfig::default();
        assert!((s.lr_at(0, 1000) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((s.lr_at(99, 1000) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert_eq!(s.lr_at(100, 1000), 1e-3);
        assert_eq!(s.lr_at(499, 1000), 1e-3);
        assert!((s.lr_at(500, 1000) - 1e-4).abs() < 1e-15);
        assert!((s.lr_at(800, 1000) - 1e-5).abs() < 1e-15);
        let c = ScheduleConfig {
            lr: 1.0,
            warmup_steps: 0,
            decay: Decay::Cosine {
                final_fraction: 0.1,
            },
        };
        assert_eq!(c.lr_at(0, 100), 1.0);
        assert!((c.lr_at(50, 100) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(100, 100) - 0.1).abs() < 1e-12);
        assert_eq!(ScheduleConfig::constant(0.5).lr_at(7, 10), 0.5);
        assert!(ScheduleConfig::constant(0.0).validate().is_err());
    }

    #[test]
    fn configs_round_trip_through_json() {
        for o in [OptimizerConfig::default(), OptimizerConfig::sgd()] {
            let j = serde_json::to_string(&o).unwrap();
            assert_eq!(serde_json::from_str::<OptimizerConfig>(&j).unwrap(), o);
            o.validate().unwrap();
        }
        let s: ScheduleConfig = serde_json::from_str(
            r#"{"lr": 0.01, "decay": {"kind": "cosine", "final_fraction": 0}}"#,
        )
        .unwrap();
        assert_eq!(s.warmup_steps, 100);
        assert!(serde_json::from_str::<ScheduleConfig>(r#"{"rate": 1}"#).is_err());
    }
}
