//! The training configuration: every hyper-parameter of a run, read from a TOML file
//! and command-line flags (flags win), completed with defaults, and turned into the
//! core's architecture, partition, method and schedule.
//!
//! Each hyper-parameter is written once, in the [`hyper_parameters!`] table below: its
//! type, its flag (with the help text, which is also its documentation as a config key)
//! and its default. The table makes the TOML schema ([`Config`], every field optional),
//! the flag groups the commands flatten ([`ModelArgs`], [`RunArgs`], [`TrainingArgs`])
//! and the completed, typed settings ([`Settings`], nothing optional that has a default).
//!
//! Defaults are the reference's (Zeudfish/HPFF `train.py`) where it has one, except
//! that a run with no flags at all is a quick demonstration: InfoPro + HPFF, K = 4, on
//! Fashion-MNIST for one epoch at batch 128, lr 0.1. A default may depend on the fields
//! above it in the table (the batch size on the data set, the schedule on the epochs).

use std::path::{Path, PathBuf};

use hpff_core::arch::{Arch, Family};
use hpff_core::method::{AuxHead, Base, Levels, LocalLoss, Method, Pff, Precision};
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
    /// Trained at the reference's large batch (1024, lr 0.8): CIFAR-10 and SVHN. The
    /// reference gives CIFAR-100 the small one (128, 0.1).
    pub fn reference_sized(self) -> bool {
        matches!(self, DatasetName::Cifar10 | DatasetName::Svhn)
    }

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

/// Which reference's auxiliary nets (`--aux-nets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AuxNetsName {
    /// The CIFAR code's: small conv heads, one-conv decoders.
    Cifar,
    /// The ImageNet code's (`InfoProAux.py`): heads with strided convs to 2048 features,
    /// decoders that upsample in stages (ImageNet networks only).
    Imagenet,
}

/// Where PFF cuts the decoder's work into patches (`--pff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PffName {
    /// Feature patches decoded one at a time (cuts the decoder's memory).
    Input,
    /// One decoder on the whole map, its output cut into patches for the loss (the ImageNet reference).
    Output,
}

/// How the values a training step keeps for backward are stored (`--precision`,
/// Lightning's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum PrecisionName {
    /// Everything f32.
    #[value(name = "32")]
    #[serde(rename = "32")]
    F32,
    /// The residual blocks' kept values in bf16; all arithmetic, parameters and their
    /// gradients and momentum f32.
    #[value(name = "bf16-mixed")]
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// The same values in IEEE f16 (gradients stay f32: no loss scaling needed).
    #[value(name = "16-mixed")]
    #[serde(rename = "16-mixed")]
    F16Mixed,
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

/// How `--pipeline` splits the modules over its stages when `--stages` does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceName {
    /// Time one training step of each module on this machine at the start (the stages
    /// share the work), and split so that the slowest stage is as fast as it can be.
    Time,
    /// Split by the plan's FLOP counts: no measurement, the same split on every machine.
    Flops,
}

/// Input shape of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub image: usize,
    pub classes: usize,
}

/// Defines the hyper-parameters once. Each entry is
/// `/// help` `#[arg(..)]` `name: Type [= default];` in groups of flags; an entry without
/// a default stays optional when completed. Defaults may use the completed values of the
/// entries above them (by name) and the raw layer `$given`.
macro_rules! hyper_parameters {
    (
        $given:ident;
        $(
            $(#[doc = $gdoc:literal])*
            $group:ident {
                $(
                    $(#[doc = $doc:literal])*
                    #[arg($($arg:tt)*)]
                    $field:ident: $ty:ty $(= $default:expr)?;
                )*
            }
        )*
    ) => {
        /// Every field of a run; `None` means "not given here". A config file, the command
        /// line and a checkpoint each give one of these; [`Config::merge`] layers them and
        /// [`Config::settings`] fills the rest with defaults. The completed config
        /// ([`Config::complete`]) is what is printed, saved as `config.toml` and recorded in
        /// checkpoints.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $($(
                $(#[doc = $doc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*)*
        }

        /// A completed [`Config`]: every field with a default is filled.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            $($(
                $(#[doc = $doc])*
                pub $field: completed_type!($ty $(, $default)?),
            )*)*
        }

        impl Config {
            /// Every field filled: the given values, else the defaults (see the table).
            pub fn settings(&self) -> Settings {
                let $given = self;
                $($(
                    let $field: completed_type!($ty $(, $default)?) =
                        completed_value!($given.$field.clone() $(, $default)?);
                )*)*
                Settings { $($($field,)*)* }
            }

            /// `self` with every field that `over` gives replaced by `over`'s value.
            pub fn merge(&self, over: &Config) -> Config {
                let mut c = self.clone();
                $($(if over.$field.is_some() {
                    c.$field = over.$field.clone();
                })*)*
                c
            }
        }

        impl Settings {
            /// The completed settings as a config layer (every known field given).
            pub fn to_config(&self) -> Config {
                Config { $($($field: completed_given!(self.$field.clone() $(, $default)?),)*)* }
            }
        }

        $(
            $(#[doc = $gdoc])*
            #[derive(Debug, Clone, Default, clap::Args)]
            pub struct $group {
                $(
                    $(#[doc = $doc])*
                    #[arg($($arg)*)]
                    pub $field: Option<$ty>,
                )*
            }

            impl $group {
                /// Writes the flags given into `c`.
                pub fn apply(&self, c: &mut Config) {
                    $(if self.$field.is_some() {
                        c.$field = self.$field.clone();
                    })*
                }
            }
        )*
    };
}

macro_rules! completed_type {
    ($t:ty, $d:expr) => { $t };
    ($t:ty) => { Option<$t> };
}

macro_rules! completed_value {
    ($v:expr, $d:expr) => {
        $v.unwrap_or_else(|| $d)
    };
    ($v:expr) => {
        $v
    };
}

macro_rules! completed_given {
    ($v:expr, $d:expr) => {
        Some($v)
    };
    ($v:expr) => {
        $v
    };
}

hyper_parameters! {
    given;

    /// The network and the method (`train`, `plan` and `bench`).
    ModelArgs {
        /// Dataset [default: fashion-mnist]
        #[arg(long, value_enum)]
        dataset: DatasetName = DatasetName::FashionMnist;
        /// Backbone: CIFAR resnetN, N = 6m+2 (resnet8, resnet20, resnet32, resnet110, …) or resnet164; ImageNet resnetN-imagenet, N = 18, 34, 50, 101, 152 (7×7 stem + max pool, four stages); ResNeXt resnextN-GxWd-imagenet (resnext50-32x4d-imagenet, resnext101-32x8d-imagenet: G groups of W channels per 64 planes in every Bottleneck's 3×3) [default: resnet32]
        #[arg(long)]
        arch: String = "resnet32".into();
        /// Base width of the ResNet: stem channels, stages w, 2w, 4w (, 8w on ImageNet; 4 or 8 to fit a microcontroller) [default: 16, 64 for the ImageNet networks]
        // Left out unless given, so configs and checkpoints of default-width runs stay as they were.
        #[arg(long)]
        width: usize;
        /// Training method [default: infopro, with --hpff unless a method is named]
        #[arg(long, value_enum)]
        method: MethodName = MethodName::Infopro;
        /// Add HPFF (HiLo levels + patch feature fusion) to a local method
        #[arg(long, num_args = 0, default_missing_value = "true", conflicts_with = "no_hpff")]
        hpff: bool = given.method.is_none();
        /// Initialise the last BN of every residual branch to γ = 0, so each block starts as its shortcut (torchvision's and the reference's zero_init_residual) [default: off, as there]
        #[arg(long, num_args = 0, default_missing_value = "true")]
        zero_init_residual: bool = false;
        /// Number of modules K (the reference's label; see `hpff plan` for the true count) [default: 4]
        #[arg(long)]
        k: usize = 4;
        /// Use InfoPro's balanced-memory split tables (ResNet-110, K ≤ 4)
        #[arg(long, num_args = 0, default_missing_value = "true")]
        balanced_memory: bool = false;
        /// Explicit split points "stage,block;stage,block" (stages 1..=3, 1..=4 on the ImageNet networks), replacing --k
        #[arg(long)]
        splits: String = String::new();
        /// Auxiliary nets: the CIFAR reference's or the ImageNet reference's (InfoProAux.py; ImageNet networks only). With imagenet, HPFF defaults to that reference's recipe: cascade level only, weights λ1 = 5 and λ2 = 0.75 at every module, --pff output [default: imagenet for resnetN-imagenet, else cifar]
        #[arg(long, value_enum)]
        aux_nets: AuxNetsName = if arch.trim().to_ascii_lowercase().ends_with("-imagenet") { AuxNetsName::Imagenet } else { AuxNetsName::Cifar };
        /// Decoder patch grid n (n×n patches: 1, 2 or 4) [default: 2 with --hpff, else 1]
        #[arg(long)]
        patches: usize = if hpff { 2 } else { 1 };
        /// Where PFF cuts patches: input (feature patches decoded one at a time, each by its own decoder: less memory) or output (one decoder on the whole map, its output cut into patches for the loss: the ImageNet reference) [default: output with --aux-nets imagenet, else input]
        #[arg(long, value_enum)]
        pff: PffName = if aux_nets == AuxNetsName::Imagenet { PffName::Output } else { PffName::Input };
        /// HiLo levels (ablations: independent or cascade only) [default: both; cascade with --aux-nets imagenet]
        #[arg(long, value_enum)]
        levels: LevelsName = if aux_nets == AuxNetsName::Imagenet && hpff { LevelsName::Cascade } else { LevelsName::Both };
        /// HPFF: drop each module's forward values after its cascade backward and recompute them for its parameter gradients (same results, one more forward per module, about a fifth less activation memory)
        #[arg(long, num_args = 0, default_missing_value = "true")]
        recompute: bool = false;
        /// Storage of the values kept for backward: 32, or bf16-mixed (the residual blocks' conv outputs and inner block outputs in bf16, about half their memory; arithmetic, weights, gradients and momentum stay f32), or 16-mixed (the same values in IEEE f16: finer steps, range up to 65504) [default: 32]
        #[arg(long, value_enum)]
        precision: PrecisionName = PrecisionName::F32;
        /// Auxiliary classifier head of the CIFAR aux nets: 0c1f, 0c2f, 1c1f, 1c2f, 1c3f, 2c2f [default: 2c2f; greedy 0c1f (also with the ImageNet aux nets)]
        #[arg(long)]
        aux_classifier: String = if method == MethodName::Greedy { "0c1f".into() } else { "2c2f".into() };
        /// Loss of the auxiliary classifiers [default: ce]
        #[arg(long, value_enum)]
        local_loss: LocalLossName = LocalLossName::Ce;
        /// Width multiplier of the auxiliary nets [default: 1]
        #[arg(long)]
        aux_widen: usize = 1;
        /// Feature dimension of the auxiliary classifier [default: 128]
        #[arg(long)]
        feature_dim: usize = 128;
        /// Decoder weight λ1 at the first and the (K−1)-th module [default: 5,0; 5,5 with --aux-nets imagenet]
        #[arg(long, value_parser = parse_pair, value_name = "FIRST,LAST")]
        lambda1: [f64; 2] = if aux_nets == AuxNetsName::Imagenet { [5.0, 5.0] } else { [5.0, 0.0] };
        /// Classifier weight λ2 at the first and the (K−1)-th module [default: 0.5,0; 0.75,0.75 with --aux-nets imagenet]
        #[arg(long, value_parser = parse_pair, value_name = "FIRST,LAST")]
        lambda2: [f64; 2] = if aux_nets == AuxNetsName::Imagenet { [0.75, 0.75] } else { [0.5, 0.0] };
        /// HPFF's independent-level weight [default: 0.001]
        #[arg(long)]
        wx: f64 = 0.001;
        /// HPFF's cascade-level weight [default: 0.999]
        #[arg(long)]
        wy: f64 = 0.999;
        /// Batch size [default: 1024 for cifar10, svhn; else 128]
        // The reference trains CIFAR-10 and SVHN at 1024 / 0.8, CIFAR-100 at 128 / 0.1.
        #[arg(long)]
        batch_size: usize = if dataset.reference_sized() { 1024 } else { 128 };
    }

    /// Where and how a run computes (`train` and `bench`).
    RunArgs {
        /// Seed of initialisation, data order, augmentation and validation split [default: 0]
        #[arg(long)]
        seed: u64 = 0;
        /// CPU threads (0 = all cores) [default: 0]
        #[arg(long)]
        threads: usize = 0;
        /// Where to run: cpu, cuda or cuda:N (also reference, cuda-emu: slow executors that check the others) [default: cpu]
        #[arg(long)]
        device: Device = Device::Cpu;
        /// Allow TF32 tensor-core math on the GPU (default: strict fp32)
        #[arg(long, num_args = 0, default_missing_value = "true")]
        tf32: bool = false;
        /// Under mpirun, BatchNorm statistics over the job's whole batch (PyTorch's SyncBatchNorm) instead of each process's share; a no-op in one process
        #[arg(long, num_args = 0, default_missing_value = "true")]
        sync_bn: bool = false;
        /// Under mpirun, train the modules as a pipeline: each process holds a contiguous range of modules (a stage) and trains it while the stages above work on earlier steps, instead of a copy of the whole model
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pipeline: bool = false;
        /// With --pipeline: modules per stage, bottom up, one count per process (e.g. 3,5) [default: balanced by the plan's FLOPs]
        #[arg(long, value_delimiter = ',', value_name = "N1,N2,...")]
        stages: Vec<usize> = vec![];
        /// With --pipeline and no --stages: balance the stages by each module's step time, measured at the start, or by FLOPs (the split never changes the results, only the speed) [default: time]
        #[arg(long, value_enum)]
        balance: BalanceName = BalanceName::Time;
        /// With --pipeline: cut each step's batch into this many micro-batches that flow through the stages one after another (each stage's activation memory shrinks with them; gradients add up and each stage updates once per step, but BatchNorm normalises each micro-batch alone, so the results differ from whole batches) [default: 1]
        #[arg(long)]
        micro_batches: usize = 1;
    }

    /// Training (`train`).
    TrainingArgs {
        /// Folder holding the dataset's files [default: the cache folder; Fashion-MNIST also /usr/share/datasets/fashion-mnist]
        #[arg(long)]
        data_dir: PathBuf;
        /// Epochs [default: 1 for fashion-mnist, else 400]
        #[arg(long)]
        epochs: u32 = if dataset == DatasetName::FashionMnist { 1 } else { 400 };
        /// Base learning rate [default: 0.8 for cifar10, svhn; else 0.1]
        #[arg(long)]
        lr: f64 = if dataset.reference_sized() { 0.8 } else { 0.1 };
        /// SGD momentum [default: 0.9]
        #[arg(long)]
        momentum: f64 = 0.9;
        /// Weight decay [default: 1e-4]
        #[arg(long)]
        weight_decay: f64 = 1e-4;
        /// Plain momentum instead of Nesterov (config key: nesterov = false)
        #[arg(long = "no-nesterov", num_args = 0, default_missing_value = "false")]
        nesterov: bool = true;
        /// Learning-rate schedule [default: cosine; cosine-steps for runs under 10 epochs]
        // Per step for short runs, where the per-epoch rule would give the last — or only —
        // epoch a rate of 0.
        #[arg(long, value_enum)]
        schedule: ScheduleName = if epochs >= 10 { ScheduleName::Cosine } else { ScheduleName::CosineSteps };
        /// Linear warm-up epochs of the cosine schedule [default: min(10, epochs / 10)]
        #[arg(long)]
        warmup_epochs: u32 = (epochs / 10).min(10);
        /// Epochs where the step schedule multiplies the rate by --gamma [default: 80,120]
        #[arg(long, value_delimiter = ',', value_name = "E1,E2")]
        milestones: Vec<u32> = vec![80, 120];
        /// Factor of the step schedule [default: 0.1]
        #[arg(long)]
        gamma: f64 = 0.1;
        /// Output folder for config, metrics, checkpoints and the plot [default: runs/<dataset>-<method>[-hpff]]
        #[arg(long)]
        out: PathBuf = {
            let h = if hpff { "-hpff" } else { "" };
            PathBuf::from(format!("runs/{}-{}{h}", dataset.kind().name(), method.name()))
        };
        /// Hold out N training images for validation (evaluated each epoch; the test split once at the end) [default: 0]
        #[arg(long)]
        val_split: usize = 0;
        /// Train on a seeded random subset of N training images (0 = all)
        #[arg(long)]
        limit_train: usize = 0;
        /// Evaluate on a seeded random subset of N test (or validation) images (0 = all)
        #[arg(long)]
        limit_test: usize = 0;
        /// Turn off the dataset's training augmentation (config key: augment = false)
        #[arg(long = "no-augment", num_args = 0, default_missing_value = "false")]
        augment: bool = true;
        /// Stream an image folder (--dataset folder) from disk instead of loading it: decoded on worker threads a few batches ahead, torchvision's ImageNet transforms (RandomResizedCrop + flip; resize + centre crop for evaluation) at SIZE×SIZE, ImageNet normalization [SIZE: 224]
        #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "224")]
        stream: usize;
        /// Evaluate every N epochs (and after the last) [default: 1]
        #[arg(long)]
        eval_every: u32 = 1;
        /// A NaN or infinite loss or gradient: stop with an error, or skip (undo) the step and count it [default: stop]
        #[arg(long, value_enum)]
        on_nonfinite: NonFinite = NonFinite::Stop;
    }
}

impl Config {
    /// The first setting this config gives that only the local methods read (their modules
    /// and auxiliary nets), by flag name: e2e would ignore it.
    pub fn local_only_given(&self) -> Option<&'static str> {
        [
            ("--k", self.k.is_some()),
            ("--balanced-memory", self.balanced_memory.is_some()),
            ("--splits", self.splits.is_some()),
            ("--aux-nets", self.aux_nets.is_some()),
            ("--patches", self.patches.is_some()),
            ("--pff", self.pff.is_some()),
            ("--levels", self.levels.is_some()),
            ("--recompute", self.recompute.is_some()),
            ("--aux-classifier", self.aux_classifier.is_some()),
            ("--local-loss", self.local_loss.is_some()),
            ("--aux-widen", self.aux_widen.is_some()),
            ("--feature-dim", self.feature_dim.is_some()),
            ("--lambda1", self.lambda1.is_some()),
            ("--lambda2", self.lambda2.is_some()),
            ("--wx", self.wx.is_some()),
            ("--wy", self.wy.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// Reads a TOML config file.
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        let s = std::fs::read_to_string(path).map_err(|e| crate::error::io_err(path, "read the config file", e))?;
        Config::from_toml(&s).map_err(|e| e.context(path.display().to_string()))
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
            Error::msg(format!("bad config{}: {}", at.unwrap_or_default(), crate::error::one_line(e.message())))
        })
    }

    /// TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Every field filled: [`Config::settings`] as a config layer.
    pub fn complete(&self) -> Config {
        self.settings().to_config()
    }

    /// Completes the config, checks it and builds the typed [`Setup`] for input `shape`.
    pub fn setup(&self, shape: Shape) -> Result<Setup> {
        self.settings().setup(shape)
    }
}

impl Settings {
    /// Checks the settings and builds the typed [`Setup`] for input `shape`.
    pub fn setup(&self, shape: Shape) -> Result<Setup> {
        let c = self;
        let name = parse_arch(&c.arch)?;
        let arch = match name.family {
            Family::Cifar => Arch::resnet(name.depth, shape.c, shape.image, shape.classes),
            Family::ImageNet => Arch::resnet_imagenet(name.depth, shape.c, shape.image, shape.classes),
        };
        // Say what the data (or the shape flags) gave: a folder of tiny images, say.
        let mut arch = arch.map_err(|e| {
            let (arch, ch, side, classes) = (&c.arch, shape.c, shape.image, shape.classes);
            // The cause's text in the context too: `to_string` shows all of it, and the
            // one-line report leaves out the repeated cause.
            let what = format!("--arch {arch} on inputs of {ch} channel(s), {side}×{side}, {classes} class(es): {e}");
            Error::new(e).context(what)
        })?;
        if let Some(w) = c.width {
            arch = arch.with_width(w)?;
        }
        if let Some((groups, width_per_group)) = name.groups {
            arch = arch.with_groups(groups, width_per_group)?;
        }
        if c.zero_init_residual {
            arch = arch.with_zero_init_residual();
        }
        let method_name = c.method;
        let base = method_name.base();
        let hpff = c.hpff;
        let splits = &c.splits;
        let part = if !splits.trim().is_empty() {
            Partition::from_splits(&arch, parse_splits(splits)?)?
        } else {
            let table = if c.balanced_memory {
                if c.dataset == DatasetName::Stl10 {
                    TableKind::BalancedStl10
                } else {
                    TableKind::BalancedCifar10
                }
            } else {
                TableKind::Reference
            };
            let k = if base == Base::E2e { 1 } else { c.k };
            Partition::for_k(&arch, k, table)?
        };
        let mut method = Method::reference(base, hpff);
        method.levels = match c.levels {
            LevelsName::Both => Levels::Both,
            LevelsName::Independent => Levels::Independent,
            LevelsName::Cascade => Levels::Cascade,
        };
        method.patches = c.patches;
        method.recompute = c.recompute;
        method.aux = match c.aux_nets {
            AuxNetsName::Cifar => Family::Cifar,
            AuxNetsName::Imagenet => Family::ImageNet,
        };
        method.pff = match c.pff {
            PffName::Input => Pff::Input,
            PffName::Output => Pff::Output,
        };
        method.precision = match c.precision {
            PrecisionName::F32 => Precision::F32,
            PrecisionName::Bf16Mixed => Precision::Bf16Mixed,
            PrecisionName::F16Mixed => Precision::F16Mixed,
        };
        method.head = AuxHead::parse(&c.aux_classifier)?;
        method.local_loss = match c.local_loss {
            LocalLossName::Ce => LocalLoss::CrossEntropy,
            LocalLossName::Contrast => LocalLoss::Contrast,
        };
        method.widen = c.aux_widen;
        method.feature_dim = c.feature_dim;
        // Loss weights: a negative one would train a module to raise its loss, a NaN or
        // an overflow (as f32) poison the first step; said now, not as a NaN gradient.
        let weight = |flag: &str, v: f64| {
            let w = v as f32;
            if w.is_finite() && w >= 0.0 {
                Ok(w)
            } else {
                Err(Error::msg(format!("{flag} must be a finite number ≥ 0, not {v}")))
            }
        };
        let pair = |flag: &str, p: [f64; 2]| Ok::<_, Error>([weight(flag, p[0])?, weight(flag, p[1])?]);
        method.lambda1 = pair("--lambda1", c.lambda1)?;
        method.lambda2 = pair("--lambda2", c.lambda2)?;
        method.wx = weight("--wx", c.wx)?;
        method.wy = weight("--wy", c.wy)?;
        // Paths are recorded in config.toml and checkpoint.json, which hold text.
        for (flag, p) in [("--data-dir", c.data_dir.as_ref()), ("--out", Some(&c.out))] {
            if let Some(p) = p.filter(|p| p.to_str().is_none()) {
                return Err(Error::msg(format!(
                    "{flag} {}: the path is not valid UTF-8, and run folders record their paths as text; rename it",
                    p.display()
                )));
            }
        }
        let epochs = c.epochs;
        if epochs == 0 {
            return Err(Error::msg("--epochs must be at least 1"));
        }
        let lr = c.lr as f32;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::msg(format!("--lr must be a positive number, not {lr}")));
        }
        let schedule_name = c.schedule;
        let schedule = match schedule_name {
            ScheduleName::Cosine | ScheduleName::CosineSteps => LrSchedule::Cosine {
                base_lr: lr,
                epochs,
                warmup_epochs: c.warmup_epochs,
                warmup_floor: LrSchedule::REFERENCE_WARMUP_FLOOR,
            },
            ScheduleName::Step => {
                let ms = c.milestones.clone();
                if ms.len() > 4 {
                    return Err(Error::msg("--milestones takes at most 4 epochs"));
                }
                let mut milestones = [0u32; 4];
                milestones[..ms.len()].copy_from_slice(&ms);
                LrSchedule::Step { base_lr: lr, milestones, n_milestones: ms.len(), gamma: c.gamma as f32 }
            }
            ScheduleName::Constant => LrSchedule::Constant { lr },
        };
        let sgd = Sgd { momentum: c.momentum as f32, weight_decay: c.weight_decay as f32, nesterov: c.nesterov };
        if !(0.0..1.0).contains(&sgd.momentum) {
            return Err(Error::msg(format!("--momentum must be in [0, 1), not {}", sgd.momentum)));
        }
        if !(sgd.weight_decay.is_finite() && sgd.weight_decay >= 0.0) {
            return Err(Error::msg(format!("--weight-decay must be a number ≥ 0, not {}", sgd.weight_decay)));
        }
        let gamma = c.gamma as f32;
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(Error::msg(format!("--gamma must be a positive number, not {gamma}")));
        }
        let threads = c.threads;
        if threads > crate::resources::MAX_THREADS {
            return Err(Error::msg(format!(
                "--threads {threads} is more than {} (0 uses every core)",
                crate::resources::MAX_THREADS
            )));
        }
        if c.eval_every == 0 {
            return Err(Error::msg("--eval-every must be at least 1"));
        }
        let batch = c.batch_size;
        let dataset = c.dataset;
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
            settings: c.clone(),
        };
        setup.plan(batch)?; // reject impossible configs before anything runs
        Ok(setup)
    }
}

/// What an `--arch` name says: family, depth and, for a ResNeXt, (groups, width per group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchName {
    pub family: Family,
    pub depth: usize,
    pub groups: Option<(usize, usize)>,
}

/// `"resnet32"` (or `"32"`) → the CIFAR ResNet-32; `"resnet101-imagenet"` → the ImageNet
/// ResNet-101; `"resnext50-32x4d-imagenet"` → torchvision's ResNeXt-50 (32 groups of 4
/// channels per 64 planes). Depth and groups are checked when the network is built.
pub fn parse_arch(s: &str) -> Result<ArchName> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || {
        Error::msg(format!(
            "unknown architecture {s:?}: use resnetN with N = 6m+2 (resnet8, resnet20, resnet32, resnet56, resnet110) or resnet164, resnetN-imagenet with N = 18, 34, 50, 101, 152, or resnextN-GxWd-imagenet (resnext50-32x4d-imagenet, resnext101-32x8d-imagenet)"
        ))
    };
    let (family, t) = match t.strip_suffix("-imagenet") {
        Some(rest) => (Family::ImageNet, rest),
        None => (Family::Cifar, t.as_str()),
    };
    if let Some(rest) = t.strip_prefix("resnext") {
        // N-GxWd
        let (depth, gw) = rest.split_once('-').ok_or_else(bad)?;
        let (g, w) = gw.strip_suffix('d').and_then(|gw| gw.split_once('x')).ok_or_else(bad)?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| bad());
        return Ok(ArchName { family, depth: num(depth)?, groups: Some((num(g)?, num(w)?)) });
    }
    let digits = t.strip_prefix("resnet").unwrap_or(t).trim_start_matches(['-', '_']);
    let depth = digits.parse::<usize>().map_err(|_| bad())?;
    Ok(ArchName { family, depth, groups: None })
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
    /// The completed settings it came from.
    pub settings: Settings,
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
        let c = &self.settings;
        let name = c.method.name();
        let h = if c.hpff { "+hpff" } else { "" };
        let m = &self.method;
        let aux = match m.aux {
            Family::Cifar => m.head.to_string(),
            Family::ImageNet => "imagenet".to_string(),
        };
        let pff = match (m.aux, m.pff) {
            (Family::ImageNet, Pff::Output) => " (output)",
            (Family::ImageNet, Pff::Input) => " (input)",
            (Family::Cifar, _) => "",
        };
        let precision = match m.precision {
            Precision::F32 => String::new(),
            p => format!(", {}", p.name()),
        };
        format!(
            "{name}{h}, K = {} ({} modules), patches {}{pff}, aux {aux}{precision}",
            self.part.k_label,
            self.part.modules(),
            m.patches
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
    fn imagenet_arch_names() {
        let name = |family, depth, groups| ArchName { family, depth, groups };
        assert_eq!(parse_arch("resnet101-imagenet").unwrap(), name(Family::ImageNet, 101, None));
        assert_eq!(parse_arch(" ResNet18-ImageNet").unwrap(), name(Family::ImageNet, 18, None));
        assert_eq!(parse_arch("resnet32").unwrap(), name(Family::Cifar, 32, None));
        assert_eq!(parse_arch("resnext101-32x8d-imagenet").unwrap(), name(Family::ImageNet, 101, Some((32, 8))));
        assert_eq!(parse_arch("ResNeXt164-4x16d").unwrap(), name(Family::Cifar, 164, Some((4, 16))));
        for bad in ["resnext50-imagenet", "resnext50-32x4-imagenet", "resnext-32x4d", "resnext50-ax4d"] {
            assert!(parse_arch(bad).unwrap_err().to_string().contains("unknown architecture"), "{bad}");
        }
        let shape = Shape { c: 3, image: 64, classes: 10 };
        let cfg = |arch: &str, k| Config { arch: Some(arch.into()), k: Some(k), ..Config::default() };
        let s = cfg("resnet34-imagenet", 4).setup(shape).unwrap();
        assert_eq!((s.arch.family, s.arch.width, s.arch.blocks(), s.arch.features()), (Family::ImageNet, 64, 16, 512));
        // The reference's ResNet-34 K = 4 table, not an even split.
        assert_eq!(s.part.split_point(&s.arch, 0), (2, 0));
        let e = cfg("resnet20-imagenet", 2).setup(shape).unwrap_err().to_string();
        assert!(e.contains("no ImageNet ResNet of depth 20"), "{e}");
    }

    /// An ImageNet network gets the ImageNet reference's recipe by default (its aux nets,
    /// HPFF on the cascade level only with weights 5 and 0.75, PFF cutting the output); a
    /// CIFAR network keeps the CIFAR recipe, and cannot take the ImageNet aux nets.
    #[test]
    fn imagenet_recipe_defaults() {
        let shape = Shape { c: 3, image: 64, classes: 10 };
        let s = Config { arch: Some("resnet18-imagenet".into()), ..Config::default() }.setup(shape).unwrap();
        let m = s.method;
        assert!(m.hpff && m.aux == Family::ImageNet && m.pff == Pff::Output && m.levels == Levels::Cascade);
        assert_eq!((m.lambda1, m.lambda2, m.patches), ([5.0, 5.0], [0.75, 0.75], 2));
        assert!(m.module0_x_pass());
        let mixed = Config {
            arch: Some("resnet18-imagenet".into()),
            pff: Some(PffName::Input),
            levels: Some(LevelsName::Both),
            ..Config::default()
        };
        let m = mixed.setup(shape).unwrap().method;
        assert!(m.aux == Family::ImageNet && m.pff == Pff::Input && m.levels == Levels::Both);
        let z = Config { arch: Some("resnet18-imagenet".into()), zero_init_residual: Some(true), ..Config::default() };
        assert!(z.setup(shape).unwrap().arch.zero_init_residual);
        let cifar = Config { arch: Some("resnet20".into()), ..Config::default() }.setup(shape).unwrap().method;
        assert!(cifar.aux == Family::Cifar && cifar.pff == Pff::Input && cifar.levels == Levels::Both);
        assert_eq!((cifar.lambda1, cifar.lambda2), ([5.0, 0.0], [0.5, 0.0]));
        let bad = Config { arch: Some("resnet20".into()), aux_nets: Some(AuxNetsName::Imagenet), ..Config::default() };
        let e = bad.setup(shape).unwrap_err().to_string();
        assert!(e.contains("need an ImageNet network"), "{e}");
        let bad = Config { arch: Some("resnet20".into()), pff: Some(PffName::Output), ..Config::default() };
        assert!(bad.setup(shape).unwrap_err().to_string().contains("--pff output needs"));
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
