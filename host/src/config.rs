//! The training configuration: every hyper-parameter of a run, read from a TOML file
//! and command-line flags (flags win), completed with defaults, and turned into the
//! core's architecture, partition, method and schedule.
//!
//! Defaults are the reference's (Zeudfish/HPFF `train.py`) where it has one, except
//! that a run with no flags at all is a quick demonstration: InfoPro + HPFF, K = 4, on
//! Fashion-MNIST for one epoch at batch 128, lr 0.1. In detail:
//!
//! | field | default |
//! |---|---|
//! | dataset | `fashion-mnist` |
//! | arch | `resnet32` |
//! | width | 16: the ResNet's base width (stages `w, 2w, 4w`; 4 or 8 for a microcontroller) |
//! | method / hpff | `infopro` with HPFF when `method` is not given; a named method trains plainly unless `hpff = true` |
//! | k | 4 (ignored by `e2e`); `splits` replaces it |
//! | patches | 2 with HPFF, else 1 |
//! | aux_classifier | `0c1f` for greedy, else `2c2f` |
//! | local_loss, aux_widen, feature_dim | `ce`, 1, 128 |
//! | lambda1, lambda2, wx, wy | [5, 0], [0.5, 0], 0.001, 0.999 |
//! | epochs | 1 on Fashion-MNIST, else 400 |
//! | batch_size, lr | CIFAR-10 and SVHN 1024 and 0.8; CIFAR-100, STL-10, Fashion-MNIST and folders 128 and 0.1 (the reference's) |
//! | momentum, weight_decay, nesterov | 0.9, 1e-4, true |
//! | schedule | `cosine` (the reference's, per epoch) for 10 epochs or more; `cosine-steps` (per step) for shorter runs, where the per-epoch rule would give the last — or only — epoch a rate of 0 |
//! | warmup_epochs | min(10, epochs / 10): the reference's 10 from 100 epochs up, none for short runs |
//! | milestones, gamma | [80, 120], 0.1 (step schedule) |
//! | seed, threads, device, tf32 | 0, 0 (all cores), `cpu` (or `cuda[:N]`), false (strict fp32) |
//! | augment | the dataset's reference augmentation (`--no-augment` turns it off) |
//! | stream | none: load the data set; `S`: stream an image folder through torchvision's ImageNet transforms at `S × S` |
//! | eval_every | 1 |
//! | on_nonfinite | `stop` (`skip` undoes the step and counts it) |
//! | out | `runs/<dataset>-<method>[-hpff]` |

use std::path::{Path, PathBuf};

use hpff_core::arch::Arch;
use hpff_core::method::{AuxHead, Base, Levels, LocalLoss, Method};
use hpff_core::optim::{LrSchedule, Sgd};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::Plan;
use serde::{Deserialize, Serialize};

use crate::data::{DatasetKind, Normalize};
use crate::device::Device;
use crate::error::{Error, Result};

/// What training does when a step's loss or gradient is NaN or infinite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinite {
    /// Stop with an error naming the step and the loss or tensor; the last checkpoint stays.
    Stop,
    /// Undo the step (parameters, momentum and BN statistics as before it), count it, go on.
    Skip,
}

/// A dataset name on the command line and in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    FashionMnist,
    Cifar10,
    Cifar100,
    Svhn,
    Stl10,
    Folder,
}

impl DatasetName {
    pub fn kind(self) -> DatasetKind {
        match self {
            DatasetName::FashionMnist => DatasetKind::FashionMnist,
            DatasetName::Cifar10 => DatasetKind::Cifar10,
            DatasetName::Cifar100 => DatasetKind::Cifar100,
            DatasetName::Svhn => DatasetKind::Svhn,
            DatasetName::Stl10 => DatasetKind::Stl10,
            DatasetName::Folder => DatasetKind::Folder,
        }
    }

    /// (channels, image side, classes) of the dataset's images after its default
    /// augmentation (`None` for image folders, whose shape comes from the files).
    pub fn nominal_shape(self) -> Option<Shape> {
        let s = |c, image, classes| Some(Shape { c, image, classes });
        match self {
            DatasetName::FashionMnist => s(1, 28, 10),
            DatasetName::Cifar10 | DatasetName::Svhn => s(3, 32, 10),
            DatasetName::Cifar100 => s(3, 32, 100),
            DatasetName::Stl10 => s(3, 96, 10),
            DatasetName::Folder => None,
        }
    }
}

/// The local-learning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MethodName {
    E2e,
    Greedy,
    Dgl,
    Infopro,
}

impl MethodName {
    pub fn base(self) -> Base {
        match self {
            MethodName::E2e => Base::E2e,
            MethodName::Greedy => Base::Greedy,
            MethodName::Dgl => Base::Dgl,
            MethodName::Infopro => Base::InfoPro,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MethodName::E2e => "e2e",
            MethodName::Greedy => "greedy",
            MethodName::Dgl => "dgl",
            MethodName::Infopro => "infopro",
        }
    }
}

/// HiLo's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LevelsName {
    Both,
    Independent,
    Cascade,
}

/// The auxiliary classifiers' loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LocalLossName {
    Ce,
    Contrast,
}

/// The learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleName {
    /// The reference's per-epoch cosine with linear warm-up (its last epoch runs at lr 0).
    Cosine,
    /// Cosine annealing per step: lr = 0.5·base·(1 + cos(π·t/T)) at step t of T, after
    /// an optional linear warm-up over `warmup_epochs`; for short runs.
    CosineSteps,
    /// The reference's ×gamma at each milestone epoch.
    Step,
    Constant,
}

/// Input shape of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub image: usize,
    pub classes: usize,
}

/// Every field of a run; `None` means "not given here". A config file, the command
/// line and a checkpoint each give one of these; [`Config::merge`] layers them and
/// [`Config::complete`] fills the rest with defaults. The completed config is what is
/// printed, saved as `config.toml` and recorded in checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Base width of the ResNet (stem channels; stages `w, 2w, 4w`); none = 16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hpff: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balanced_memory: Option<bool>,
    /// Split points `"stage,block;stage,block"` (replaces `k`); empty = use `k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splits: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patches: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub levels: Option<LevelsName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_classifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_loss: Option<LocalLossName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_widen: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda1: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda2: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wx: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// Allow TF32 tensor-core math on the GPU (default: strict fp32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Images carved from the training split for validation (0 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_split: Option<usize>,
    /// Use a seeded random subset of N training images (0 = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    /// Use a seeded random subset of N test (or validation) images (0 = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_test: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Stream the image folder at this output side (ImageNet transforms and normalization;
    /// `data::StreamSet`) instead of loading it; none = load it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u32>,
    /// What a NaN or infinite loss or gradient does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_nonfinite: Option<NonFinite>,
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        let s = std::fs::read_to_string(path).map_err(|e| crate::error::io_err(path, "read the config file", e))?;
        Config::from_toml(&s).map_err(|e| e.context(path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(s: &str) -> Result<Config> {
        toml::from_str(s).map_err(|e| {
            // Name the line (and so the key) the parser stopped at.
            let at = e.span().map(|sp| {
                let line = s[..sp.start.min(s.len())].matches('\n').count() + 1;
                let text = s.lines().nth(line - 1).unwrap_or("").trim();
                let text: String = text.chars().take(60).collect();
                format!(" at line {line} ({text:?})")
            });
            Error::msg(format!("bad config{}: {}", at.unwrap_or_default(), e.message().trim()))
        })
    }

    /// TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// `self` with every field that `over` gives replaced by `over`'s value.
    pub fn merge(&self, over: &Config) -> Config {
        let mut a = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("a Config serializes to an object"),
        };
        if let Ok(serde_json::Value::Object(b)) = serde_json::to_value(over) {
            a.extend(b);
        }
        serde_json::from_value(serde_json::Value::Object(a)).expect("merging two valid configs gives a valid config")
    }

    /// Every field filled: the given values, else the defaults (see the module docs).
    pub fn complete(&self) -> Config {
        let dataset = self.dataset.unwrap_or(DatasetName::FashionMnist);
        let method = self.method.unwrap_or(MethodName::Infopro);
        let hpff = self.hpff.unwrap_or(self.method.is_none());
        // The reference trains CIFAR-10 and SVHN at 1024 / 0.8, CIFAR-100 at 128 / 0.1.
        let reference_sized = matches!(dataset, DatasetName::Cifar10 | DatasetName::Svhn);
        let epochs = self.epochs.unwrap_or(if dataset == DatasetName::FashionMnist { 1 } else { 400 });
        let out = self.out.clone().unwrap_or_else(|| {
            let h = if hpff { "-hpff" } else { "" };
            PathBuf::from(format!("runs/{}-{}{h}", dataset.kind().name(), method.name()))
        });
        Config {
            dataset: Some(dataset),
            data_dir: self.data_dir.clone(),
            arch: Some(self.arch.clone().unwrap_or_else(|| "resnet32".into())),
            // Left out unless given, so configs and checkpoints of default-width runs stay as they were.
            width: self.width,
            method: Some(method),
            hpff: Some(hpff),
            k: Some(self.k.unwrap_or(4)),
            balanced_memory: Some(self.balanced_memory.unwrap_or(false)),
            splits: Some(self.splits.clone().unwrap_or_default()),
            patches: Some(self.patches.unwrap_or(if hpff { 2 } else { 1 })),
            levels: Some(self.levels.unwrap_or(LevelsName::Both)),
            aux_classifier: Some(self.aux_classifier.clone().unwrap_or_else(|| {
                if method == MethodName::Greedy {
                    "0c1f".into()
                } else {
                    "2c2f".into()
                }
            })),
            local_loss: Some(self.local_loss.unwrap_or(LocalLossName::Ce)),
            aux_widen: Some(self.aux_widen.unwrap_or(1)),
            feature_dim: Some(self.feature_dim.unwrap_or(128)),
            lambda1: Some(self.lambda1.unwrap_or([5.0, 0.0])),
            lambda2: Some(self.lambda2.unwrap_or([0.5, 0.0])),
            wx: Some(self.wx.unwrap_or(0.001)),
            wy: Some(self.wy.unwrap_or(0.999)),
            epochs: Some(epochs),
            batch_size: Some(self.batch_size.unwrap_or(if reference_sized { 1024 } else { 128 })),
            lr: Some(self.lr.unwrap_or(if reference_sized { 0.8 } else { 0.1 })),
            momentum: Some(self.momentum.unwrap_or(0.9)),
            weight_decay: Some(self.weight_decay.unwrap_or(1e-4)),
            nesterov: Some(self.nesterov.unwrap_or(true)),
            schedule: Some(self.schedule.unwrap_or(if epochs >= 10 {
                ScheduleName::Cosine
            } else {
                ScheduleName::CosineSteps
            })),
            warmup_epochs: Some(self.warmup_epochs.unwrap_or((epochs / 10).min(10))),
            milestones: Some(self.milestones.clone().unwrap_or_else(|| vec![80, 120])),
            gamma: Some(self.gamma.unwrap_or(0.1)),
            seed: Some(self.seed.unwrap_or(0)),
            threads: Some(self.threads.unwrap_or(0)),
            device: Some(self.device.unwrap_or(Device::Cpu)),
            tf32: Some(self.tf32.unwrap_or(false)),
            out: Some(out),
            val_split: Some(self.val_split.unwrap_or(0)),
            limit_train: Some(self.limit_train.unwrap_or(0)),
            limit_test: Some(self.limit_test.unwrap_or(0)),
            augment: Some(self.augment.unwrap_or(true)),
            stream: self.stream,
            eval_every: Some(self.eval_every.unwrap_or(1)),
            on_nonfinite: Some(self.on_nonfinite.unwrap_or(NonFinite::Stop)),
        }
    }

    /// Checks a completed config and builds the typed [`Setup`] for input `shape`.
    pub fn setup(&self, shape: Shape) -> Result<Setup> {
        let c = self.complete();
        let g = Get(&c);
        let depth = parse_arch(&g.s(&c.arch))?;
        let mut arch = Arch::resnet(depth, shape.c, shape.image, shape.classes)?;
        if let Some(w) = c.width {
            arch = arch.with_width(w)?;
        }
        let method_name = g.v(c.method);
        let base = method_name.base();
        let hpff = g.v(c.hpff);
        let splits = g.s(&c.splits);
        let part = if !splits.trim().is_empty() {
            Partition::from_splits(&arch, parse_splits(&splits)?)?
        } else {
            let table = if g.v(c.balanced_memory) {
                if g.v(c.dataset) == DatasetName::Stl10 {
                    TableKind::BalancedStl10
                } else {
                    TableKind::BalancedCifar10
                }
            } else {
                TableKind::Reference
            };
            let k = if base == Base::E2e { 1 } else { g.v(c.k) };
            Partition::for_k(&arch, k, table)?
        };
        let mut method = Method::reference(base, hpff);
        method.levels = match g.v(c.levels) {
            LevelsName::Both => Levels::Both,
            LevelsName::Independent => Levels::Independent,
            LevelsName::Cascade => Levels::Cascade,
        };
        method.patches = g.v(c.patches);
        method.head = AuxHead::parse(&g.s(&c.aux_classifier))?;
        method.local_loss = match g.v(c.local_loss) {
            LocalLossName::Ce => LocalLoss::CrossEntropy,
            LocalLossName::Contrast => LocalLoss::Contrast,
        };
        method.widen = g.v(c.aux_widen);
        method.feature_dim = g.v(c.feature_dim);
        let pair = |p: [f64; 2]| [p[0] as f32, p[1] as f32];
        method.lambda1 = pair(g.v(c.lambda1));
        method.lambda2 = pair(g.v(c.lambda2));
        method.wx = g.v(c.wx) as f32;
        method.wy = g.v(c.wy) as f32;
        // Paths are recorded in config.toml and checkpoint.json, which hold text.
        for (flag, p) in [("--data-dir", &c.data_dir), ("--out", &c.out)] {
            if let Some(p) = p.as_ref().filter(|p| p.to_str().is_none()) {
                return Err(Error::msg(format!(
                    "{flag} {}: the path is not valid UTF-8, and run folders record their paths as text; rename it",
                    p.display()
                )));
            }
        }
        let epochs = g.v(c.epochs);
        if epochs == 0 {
            return Err(Error::msg("--epochs must be at least 1"));
        }
        let lr = g.v(c.lr) as f32;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::msg(format!("--lr must be a positive number, not {lr}")));
        }
        let schedule_name = g.v(c.schedule);
        let schedule = match schedule_name {
            ScheduleName::Cosine | ScheduleName::CosineSteps => LrSchedule::Cosine {
                base_lr: lr,
                epochs,
                warmup_epochs: g.v(c.warmup_epochs),
                warmup_floor: LrSchedule::REFERENCE_WARMUP_FLOOR,
            },
            ScheduleName::Step => {
                let ms = g.v(c.milestones.clone());
                if ms.len() > 4 {
                    return Err(Error::msg("--milestones takes at most 4 epochs"));
                }
                let mut milestones = [0u32; 4];
                milestones[..ms.len()].copy_from_slice(&ms);
                LrSchedule::Step { base_lr: lr, milestones, n_milestones: ms.len(), gamma: g.v(c.gamma) as f32 }
            }
            ScheduleName::Constant => LrSchedule::Constant { lr },
        };
        let sgd = Sgd {
            momentum: g.v(c.momentum) as f32,
            weight_decay: g.v(c.weight_decay) as f32,
            nesterov: g.v(c.nesterov),
        };
        if !(0.0..1.0).contains(&sgd.momentum) {
            return Err(Error::msg(format!("--momentum must be in [0, 1), not {}", sgd.momentum)));
        }
        if !(sgd.weight_decay.is_finite() && sgd.weight_decay >= 0.0) {
            return Err(Error::msg(format!("--weight-decay must be a number ≥ 0, not {}", sgd.weight_decay)));
        }
        let gamma = g.v(c.gamma);
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(Error::msg(format!("--gamma must be a positive number, not {gamma}")));
        }
        let threads = g.v(c.threads);
        if threads > crate::resources::MAX_THREADS {
            return Err(Error::msg(format!(
                "--threads {threads} is more than {} (0 uses every core)",
                crate::resources::MAX_THREADS
            )));
        }
        if g.v(c.eval_every) == 0 {
            return Err(Error::msg("--eval-every must be at least 1"));
        }
        let batch = g.v(c.batch_size);
        let dataset = g.v(c.dataset);
        let normalize = if c.stream.is_some() { Normalize::imagenet() } else { dataset.kind().default_normalize() };
        let (mean, std) = plan_normalization(&normalize, shape.c);
        let setup = Setup {
            per_step: schedule_name == ScheduleName::CosineSteps,
            dataset,
            arch,
            part,
            method,
            schedule,
            sgd,
            batch,
            mean,
            std,
            normalize,
            config: c,
        };
        setup.plan(batch)?; // reject impossible configs before anything runs
        Ok(setup)
    }
}

struct Get<'a>(&'a Config);
impl Get<'_> {
    fn v<T>(&self, x: Option<T>) -> T {
        x.expect("a completed config has every field")
    }
    fn s(&self, x: &Option<String>) -> String {
        let _ = self.0;
        x.clone().expect("a completed config has every field")
    }
}

/// `"resnet32"` (or `"32"`) → 32.
pub fn parse_arch(s: &str) -> Result<usize> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.strip_prefix("resnet").unwrap_or(&t).trim_start_matches(['-', '_']);
    digits.parse::<usize>().map_err(|_| {
        Error::msg(format!(
            "unknown architecture {s:?}: use resnetN with N = 6m+2 (resnet8, resnet20, resnet32, resnet56, resnet110) or resnet164"
        ))
    })
}

/// `"1,4;2,4"` → [(1,4), (2,4)].
pub fn parse_splits(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let bad = || {
                Error::msg(format!(
                    "bad split point {p:?} in --splits {s:?}: write stage,block pairs separated by ';', e.g. \"1,4;2,4\""
                ))
            };
            let (a, b) = p.split_once(',').ok_or_else(bad)?;
            Ok((
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

/// `"5,0"` → [5.0, 0.0] (for `--lambda1`, `--lambda2`).
pub fn parse_pair(s: &str) -> std::result::Result<[f64; 2], String> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |t: &str| t.parse::<f64>().map_err(|_| format!("{t:?} is not a number"));
    match v[..] {
        [a] => {
            let a = num(a)?;
            Ok([a, a])
        }
        [a, b] => Ok([num(a)?, num(b)?]),
        _ => Err("expected FIRST,LAST (two numbers)".into()),
    }
}

fn plan_normalization(n: &Normalize, c: usize) -> ([f32; 4], [f32; 4]) {
    let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let (mut m, mut s) = ([0.0; 4], [1.0; 4]);
    for i in 0..c.min(4) {
        if n.mean.len() == 1 || i < n.mean.len() {
            m[i] = pick(&n.mean, i);
        }
        if n.std.len() == 1 || i < n.std.len() {
            s[i] = pick(&n.std, i);
        }
    }
    (m, s)
}

/// A checked configuration, typed for the core.
#[derive(Clone, Debug)]
pub struct Setup {
    pub dataset: DatasetName,
    pub arch: Arch,
    pub part: Partition,
    pub method: Method,
    pub schedule: LrSchedule,
    /// `schedule` is a cosine evaluated per step ([`ScheduleName::CosineSteps`]).
    pub per_step: bool,
    pub sgd: Sgd,
    pub batch: usize,
    pub mean: [f32; 4],
    pub std: [f32; 4],
    pub normalize: Normalize,
    /// The completed config it came from.
    pub config: Config,
}

impl Setup {
    /// The plan at batch size `batch` (parameter offsets do not depend on it).
    pub fn plan(&self, batch: usize) -> Result<Plan> {
        let m = &self.method;
        let widest = (self.arch.width * 16).max(m.feature_dim * m.widen.max(1)).max(self.arch.classes);
        crate::resources::check_plannable(batch, self.arch.image, widest.max(self.arch.in_channels))?;
        Ok(Plan::new(self.arch, self.part.clone(), self.method, batch, self.mean, self.std)?)
    }

    /// The learning rate of step `step` (0-based) of 1-based `epoch` with `steps` steps
    /// an epoch.
    pub fn lr(&self, epoch: u32, step: usize, steps: usize) -> f32 {
        match (self.per_step, self.schedule) {
            (true, LrSchedule::Cosine { base_lr, epochs, warmup_epochs, warmup_floor }) => {
                let steps = steps.max(1) as f64;
                let t = (epoch.saturating_sub(1)) as f64 * steps + step as f64;
                let total = epochs.max(1) as f64 * steps;
                let base = base_lr as f64;
                let cos = 0.5 * base * (1.0 + (std::f64::consts::PI * t / total).cos());
                let w = warmup_epochs as f64 * steps;
                if t < w {
                    let f = warmup_floor as f64;
                    (f + (cos - f) * t / w) as f32
                } else {
                    cos as f32
                }
            }
            (_, s) => s.lr(epoch),
        }
    }

    /// One line describing the effective learning-rate schedule.
    pub fn schedule_line(&self) -> String {
        if let (true, LrSchedule::Cosine { base_lr, epochs, warmup_epochs, warmup_floor }) =
            (self.per_step, self.schedule)
        {
            let w = if warmup_epochs == 0 {
                "no warm-up".to_string()
            } else {
                format!("linear warm-up from {warmup_floor} over {warmup_epochs} epochs")
            };
            return format!("cosine per step from lr {base_lr} to 0 over {epochs} epochs, {w}");
        }
        match self.schedule {
            LrSchedule::Cosine { base_lr, epochs, warmup_epochs, warmup_floor } => {
                if warmup_epochs == 0 {
                    format!("cosine per epoch (the reference's) from lr {base_lr} over {epochs} epochs, no warm-up")
                } else {
                    format!(
                        "cosine per epoch (the reference's) from lr {base_lr} over {epochs} epochs, linear warm-up from {warmup_floor} over {warmup_epochs} epochs"
                    )
                }
            }
            LrSchedule::Step { base_lr, milestones, n_milestones, gamma } => {
                format!("step: lr {base_lr}, ×{gamma} at epochs {:?}", &milestones[..n_milestones])
            }
            LrSchedule::Constant { lr } => format!("constant lr {lr}"),
        }
    }

    /// A short description of the method ("infopro+hpff K=4 (4 modules)").
    pub fn method_line(&self) -> String {
        let c = &self.config;
        let name = c.method.map_or("?", MethodName::name);
        let h = if c.hpff == Some(true) { "+hpff" } else { "" };
        format!(
            "{name}{h}, K = {} ({} modules), patches {}, aux {}",
            self.part.k_label,
            self.part.modules(),
            self.method.patches,
            self.method.head
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_quick_demo_and_the_reference() {
        let c = Config::default().complete();
        assert_eq!(c.dataset, Some(DatasetName::FashionMnist));
        assert_eq!(c.method, Some(MethodName::Infopro));
        assert_eq!(c.hpff, Some(true));
        assert_eq!((c.epochs, c.batch_size, c.lr), (Some(1), Some(128), Some(0.1)));
        assert_eq!(c.warmup_epochs, Some(0));
        assert_eq!(c.schedule, Some(ScheduleName::CosineSteps));
        assert_eq!(c.patches, Some(2));
        let r = Config { dataset: Some(DatasetName::Cifar10), method: Some(MethodName::Dgl), ..Config::default() }
            .complete();
        assert_eq!((r.epochs, r.batch_size, r.lr), (Some(400), Some(1024), Some(0.8)));
        assert_eq!((r.hpff, r.patches, r.warmup_epochs), (Some(false), Some(1), Some(10)));
        assert_eq!(r.schedule, Some(ScheduleName::Cosine));
        let at = |d| {
            let c = Config { dataset: Some(d), ..Config::default() }.complete();
            (c.batch_size.unwrap(), c.lr.unwrap())
        };
        assert_eq!(at(DatasetName::Svhn), (1024, 0.8));
        // The reference gives CIFAR-100 the small batch.
        assert_eq!(at(DatasetName::Cifar100), (128, 0.1));
        assert_eq!(at(DatasetName::Stl10), (128, 0.1));
        let g = Config { method: Some(MethodName::Greedy), ..Config::default() }.complete();
        assert_eq!(g.aux_classifier.as_deref(), Some("0c1f"));
    }

    #[test]
    fn merge_lets_the_later_layer_win_and_keeps_the_rest() {
        let file = Config::from_toml("dataset = \"cifar10\"\nepochs = 7\nlambda1 = [4.0, 1.0]\nmilestones = [1, 2]\n")
            .unwrap();
        let cli = Config { epochs: Some(3), lr: Some(0.05), ..Config::default() };
        let m = file.merge(&cli);
        assert_eq!(m.dataset, Some(DatasetName::Cifar10));
        assert_eq!(m.epochs, Some(3));
        assert_eq!(m.lr, Some(0.05));
        assert_eq!(m.lambda1, Some([4.0, 1.0]));
        assert_eq!(m.milestones, Some(vec![1, 2]));
        assert_eq!(m.batch_size, None);
        // A completed config round-trips through TOML.
        let full = m.complete();
        assert_eq!(Config::from_toml(&full.to_toml()).unwrap(), full);
        // Unknown keys and bad values are one-line errors.
        let e = Config::from_toml("epoch = 3").unwrap_err().to_string();
        assert!(e.contains("unknown field `epoch`"), "{e}");
        assert!(!e.contains('\n'));
        assert!(Config::from_toml("method = \"sgd\"").is_err());
    }

    #[test]
    fn setup_builds_and_rejects() {
        let fm = DatasetName::FashionMnist.nominal_shape().unwrap();
        let s = Config::default().setup(fm).unwrap();
        assert_eq!((s.part.modules(), s.arch.in_channels, s.arch.image), (4, 1, 28));
        assert_eq!(s.mean[0], 0.2860);
        let bad = |c: Config| c.setup(fm).unwrap_err().to_string();
        let e = bad(Config { k: Some(99), ..Config::default() });
        assert!(e.contains("more than the 15 blocks"), "{e}");
        let e = bad(Config { arch: Some("vgg".into()), ..Config::default() });
        assert!(e.contains("unknown architecture"), "{e}");
        let e = Config { patches: Some(4), arch: Some("resnet8".into()), k: Some(3), ..Config::default() }
            .setup(Shape { c: 1, image: 6, classes: 10 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("patch grid"), "{e}");
        let e = bad(Config { method: Some(MethodName::E2e), hpff: Some(true), ..Config::default() });
        assert!(e.contains("--hpff needs a local method"), "{e}");
        let s = Config { splits: Some("1,4;2,4".into()), ..Config::default() }.setup(fm).unwrap();
        assert_eq!(s.part.modules(), 3);
        assert!(parse_splits("1;2").is_err());
        // Per-step cosine: starts at the base rate, half-way is half of it.
        let one = Config::default().setup(fm).unwrap();
        assert!(one.per_step);
        assert_eq!(one.lr(1, 0, 10), 0.1);
        assert!((one.lr(1, 5, 10) - 0.05).abs() < 1e-7);
        let r = Config { epochs: Some(400), ..Config::default() }.setup(fm).unwrap();
        assert!(!r.per_step);
        assert_eq!(r.lr(3, 7, 10), r.schedule.lr(3));
        assert_eq!(parse_pair("5,0").unwrap(), [5.0, 0.0]);
    }

    #[test]
    fn width_narrows_the_network_and_stays_out_of_default_configs() {
        let fm = DatasetName::FashionMnist.nominal_shape().unwrap();
        let d = Config::default().setup(fm).unwrap();
        assert_eq!(d.arch.width, hpff_core::arch::DEFAULT_WIDTH);
        assert!(!Config::default().complete().to_toml().contains("width"));
        let c = Config { width: Some(4), ..Config::default() };
        assert!(c.complete().to_toml().contains("width = 4"));
        let n = c.setup(fm).unwrap();
        assert_eq!((n.arch.width, n.arch.features()), (4, 16));
        assert!(n.plan(8).unwrap().params < d.plan(8).unwrap().params);
        let e = Config { width: Some(0), ..Config::default() }.setup(fm).unwrap_err().to_string();
        assert!(e.contains("base width"), "{e}");
    }
}
