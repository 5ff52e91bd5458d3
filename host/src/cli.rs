//! The `hpff` command line: `train`, `eval`, `plan` and `bench`.
//!
//! Every failure is one line `hpff: error: …` on stderr and exit code 1; malformed
//! flags are clap's usage errors, exit code 2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::config::{
    parse_pair, Config, DatasetName, LevelsName, LocalLossName, MethodName, NonFinite, ScheduleName, Shape,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::train::{self, RunOptions};

/// Hierarchical locally supervised learning with patch feature fusion (HPFF), Greedy
/// SL, DGL, InfoPro and end-to-end training of CIFAR ResNets.
#[derive(Debug, Parser)]
#[command(name = "hpff", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network (with no flags: InfoPro + HPFF, K = 4, ResNet-32, one epoch of Fashion-MNIST).
    Train(TrainArgs),
    /// Evaluate a checkpoint on the test split.
    Eval(EvalArgs),
    /// Print the static memory plan of a training step, before anything runs.
    Plan(PlanArgs),
    /// Time training steps and eval passes on synthetic data.
    Bench(BenchArgs),
}

/// The network and method (shared by train, plan and bench).
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// Dataset [default: fashion-mnist]
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Backbone: resnetN, N = 6m+2 (resnet8, resnet20, resnet32, resnet110, …) or resnet164 [default: resnet32]
    #[arg(long)]
    pub arch: Option<String>,
    /// Training method [default: infopro, with --hpff unless a method is named]
    #[arg(long, value_enum)]
    pub method: Option<MethodName>,
    /// Add HPFF (HiLo levels + patch feature fusion) to a local method
    #[arg(long, conflicts_with = "no_hpff")]
    pub hpff: bool,
    /// Train the plain method (turns off the default HPFF)
    #[arg(long)]
    pub no_hpff: bool,
    /// Number of modules K (the reference's label; see `hpff plan` for the true count) [default: 4]
    #[arg(long)]
    pub k: Option<usize>,
    /// Use InfoPro's balanced-memory split tables (ResNet-110, K ≤ 4)
    #[arg(long)]
    pub balanced_memory: bool,
    /// Explicit split points "stage,block;stage,block" (stages 1..=3), replacing --k
    #[arg(long)]
    pub splits: Option<String>,
    /// Decoder patch grid n (n×n patches: 1, 2 or 4) [default: 2 with --hpff, else 1]
    #[arg(long)]
    pub patches: Option<usize>,
    /// HiLo levels (ablations: independent or cascade only) [default: both]
    #[arg(long, value_enum)]
    pub levels: Option<LevelsName>,
    /// Auxiliary classifier head: 0c1f, 0c2f, 1c1f, 1c2f, 1c3f, 2c2f [default: 2c2f; greedy 0c1f]
    #[arg(long)]
    pub aux_classifier: Option<String>,
    /// Loss of the auxiliary classifiers [default: ce]
    #[arg(long, value_enum)]
    pub local_loss: Option<LocalLossName>,
    /// Width multiplier of the auxiliary nets [default: 1]
    #[arg(long)]
    pub aux_widen: Option<usize>,
    /// Feature dimension of the auxiliary classifier [default: 128]
    #[arg(long)]
    pub feature_dim: Option<usize>,
    /// Decoder weight λ1 at the first and the (K−1)-th module [default: 5,0]
    #[arg(long, value_parser = parse_pair, value_name = "FIRST,LAST")]
    pub lambda1: Option<[f64; 2]>,
    /// Classifier weight λ2 at the first and the (K−1)-th module [default: 0.5,0]
    #[arg(long, value_parser = parse_pair, value_name = "FIRST,LAST")]
    pub lambda2: Option<[f64; 2]>,
    /// HPFF's independent-level weight [default: 0.001]
    #[arg(long)]
    pub wx: Option<f64>,
    /// HPFF's cascade-level weight [default: 0.999]
    #[arg(long)]
    pub wy: Option<f64>,
    /// Batch size [default: 1024 for cifar10, svhn; else 128]
    #[arg(long)]
    pub batch_size: Option<usize>,
}

impl ModelArgs {
    fn to_config(&self) -> Config {
        let flag = |on: bool, off: bool| {
            if on {
                Some(true)
            } else if off {
                Some(false)
            } else {
                None
            }
        };
        Config {
            dataset: self.dataset,
            arch: self.arch.clone(),
            method: self.method,
            hpff: flag(self.hpff, self.no_hpff),
            k: self.k,
            balanced_memory: self.balanced_memory.then_some(true),
            splits: self.splits.clone(),
            patches: self.patches,
            levels: self.levels,
            aux_classifier: self.aux_classifier.clone(),
            local_loss: self.local_loss,
            aux_widen: self.aux_widen,
            feature_dim: self.feature_dim,
            lambda1: self.lambda1,
            lambda2: self.lambda2,
            wx: self.wx,
            wy: self.wy,
            batch_size: self.batch_size,
            ..Config::default()
        }
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder holding the dataset's files [default: the cache folder; Fashion-MNIST also /usr/share/datasets/fashion-mnist]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Epochs [default: 1 for fashion-mnist, else 400]
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Base learning rate [default: 0.8 for cifar10, svhn; else 0.1]
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay [default: 1e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Plain momentum instead of Nesterov
    #[arg(long)]
    pub no_nesterov: bool,
    /// Learning-rate schedule [default: cosine]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleName>,
    /// Linear warm-up epochs of the cosine schedule [default: min(10, epochs / 10)]
    #[arg(long)]
    pub warmup_epochs: Option<u32>,
    /// Epochs where the step schedule multiplies the rate by --gamma [default: 80,120]
    #[arg(long, value_delimiter = ',', value_name = "E1,E2")]
    pub milestones: Option<Vec<u32>>,
    /// Factor of the step schedule [default: 0.1]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Seed of initialisation, data order, augmentation and validation split [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads (0 = all cores) [default: 0]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to train: cpu, cuda or cuda:N [default: cpu]
    #[arg(long)]
    pub device: Option<Device>,
    /// Allow TF32 tensor-core math on the GPU (default: strict fp32)
    #[arg(long)]
    pub tf32: bool,
    /// Output folder for config, metrics, checkpoints and the plot [default: runs/<dataset>-<method>[-hpff]]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a run from its checkpoint (folder, checkpoint.json or .safetensors); its config is the base that flags override
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Read settings from a TOML file (same names as the flags, with underscores); flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hold out N training images for validation (evaluated each epoch; the test split once at the end) [default: 0]
    #[arg(long)]
    pub val_split: Option<usize>,
    /// Train on a seeded random subset of N training images (0 = all)
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Evaluate on a seeded random subset of N test (or validation) images (0 = all)
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Turn off the dataset's training augmentation
    #[arg(long)]
    pub no_augment: bool,
    /// Stream an image folder (--dataset folder) from disk instead of loading it: decoded on worker threads a few batches ahead, torchvision's ImageNet transforms (RandomResizedCrop + flip; resize + centre crop for evaluation) at SIZE×SIZE, ImageNet normalization [SIZE: 224]
    #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "224")]
    pub stream: Option<usize>,
    /// Evaluate every N epochs (and after the last) [default: 1]
    #[arg(long)]
    pub eval_every: Option<u32>,
    /// A NaN or infinite loss or gradient: stop with an error, or skip (undo) the step and count it [default: stop]
    #[arg(long, value_enum)]
    pub on_nonfinite: Option<NonFinite>,
    /// Stop once this epoch is complete; the schedule still spans --epochs (continue with --resume)
    #[arg(long)]
    pub stop_after: Option<u32>,
    /// No progress bar and no per-epoch lines
    #[arg(long, short)]
    pub quiet: bool,
    /// Refuse to start (before allocating) if the plan's activation peak exceeds this size
    /// (64MiB, 1GiB, bytes), naming a configuration that fits
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
}

impl TrainArgs {
    /// The settings the flags give (unset flags are `None`).
    pub fn to_config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            epochs: self.epochs,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.no_nesterov.then_some(false),
            schedule: self.schedule,
            warmup_epochs: self.warmup_epochs,
            milestones: self.milestones.clone(),
            gamma: self.gamma,
            seed: self.seed,
            threads: self.threads,
            device: self.device,
            tf32: self.tf32.then_some(true),
            out: self.out.clone(),
            val_split: self.val_split,
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            augment: self.no_augment.then_some(false),
            stream: self.stream,
            eval_every: self.eval_every,
            on_nonfinite: self.on_nonfinite,
            ..self.model.to_config()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The checkpoint (run folder, checkpoint.json or its tensor file)
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Refuse (before allocating) an eval pass whose activations exceed SIZE (64MiB, 1GiB, …), naming a batch that fits
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Dataset [default: the checkpoint's]
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Folder holding the dataset's files [default: the checkpoint's]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Batch size [default: the checkpoint's]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// CPU threads (0 = all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to evaluate: cpu, cuda or cuda:N [default: the checkpoint's]
    #[arg(long)]
    pub device: Option<Device>,
    /// Allow TF32 tensor-core math on the GPU (default: strict fp32)
    #[arg(long)]
    pub tf32: bool,
    /// Evaluate on N test images (0 = all): the seeded random subset hpff train used with the same --limit-test
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// The input shape, for commands that run no data.
#[derive(Debug, Clone, Default, Args)]
pub struct ShapeArgs {
    /// Image side [default: the dataset's]
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Input channels [default: the dataset's]
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Classes [default: the dataset's]
    #[arg(long)]
    pub classes: Option<usize>,
}

impl ShapeArgs {
    fn shape(&self, dataset: DatasetName) -> Result<Shape> {
        let nominal = dataset.nominal_shape();
        let pick = |given: Option<usize>, f: fn(&Shape) -> usize, flag: &str| {
            given.or(nominal.as_ref().map(f)).ok_or_else(|| {
                Error::msg(format!(
                    "an image folder has no fixed shape: give --{flag} (and --image-size, --in-channels, --classes)"
                ))
            })
        };
        Ok(Shape {
            c: pick(self.in_channels, |s| s.c, "in-channels")?,
            image: pick(self.image_size, |s| s.image, "image-size")?,
            classes: pick(self.classes, |s| s.classes, "classes")?,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Base width of the ResNet: stem channels, stages w, 2w, 4w (4 or 8 to fit a microcontroller) [default: 16]
    #[arg(long)]
    pub width: Option<usize>,
    /// Read settings from a TOML file; flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// List the schedule op by op (training step, then eval pass): every buffer's value,
    /// offset, size and lifetime, and the values that make up the peak
    #[arg(long)]
    pub ops: bool,
    /// Search K, split points, patch grid and batch (up to --batch-size) for the plan with the
    /// best expected accuracy whose activation peak fits, e.g. 64MiB, 1GiB, 500MB or bytes
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Refuse (before allocating) a plan whose activation peak exceeds SIZE (64MiB, 1GiB, …), naming what fits
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Read settings from a TOML file; flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Timed training steps (and as many eval passes)
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before timing
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// CPU threads (0 = all cores) [default: 0]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the synthetic data and the initialisation [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to run: cpu, cuda or cuda:N [default: cpu]
    #[arg(long)]
    pub device: Option<Device>,
    /// Allow TF32 tensor-core math on the GPU (default: strict fp32)
    #[arg(long)]
    pub tf32: bool,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

fn with_file(file: &Option<PathBuf>, flags: Config) -> Result<Config> {
    Ok(match file {
        Some(p) => Config::from_toml_file(p)?.merge(&flags),
        None => flags,
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let cfg = with_file(&a.config, a.to_config())?;
            let memory_limit = a.memory_limit.as_deref().map(commands::budget::parse_size).transpose()?;
            let opts = RunOptions { resume: a.resume.clone(), stop_after: a.stop_after, quiet: a.quiet, memory_limit };
            train::train(&cfg, &opts).map(|_| ())
        }
        Command::Eval(a) => {
            let over = Config {
                dataset: a.dataset,
                data_dir: a.data_dir.clone(),
                batch_size: a.batch_size,
                threads: a.threads,
                device: a.device,
                tf32: a.tf32.then_some(true),
                limit_test: a.limit_test,
                ..Config::default()
            };
            let limit = a.memory_limit.as_deref().map(commands::budget::parse_size).transpose()?;
            commands::eval::eval(&a.checkpoint, &over, a.json, limit)
        }
        Command::Plan(a) => {
            let flags = Config { width: a.width, ..a.model.to_config() };
            let cfg = with_file(&a.config, flags)?.complete();
            let shape = a.shape.shape(cfg.dataset.unwrap_or(DatasetName::FashionMnist))?;
            let limit = a.memory_limit.as_deref().map(commands::budget::parse_size).transpose()?;
            commands::plan::plan(&cfg, shape, a.json, a.ops, limit)
        }
        Command::Bench(a) => {
            let flags = Config {
                threads: a.threads,
                seed: a.seed,
                device: a.device,
                tf32: a.tf32.then_some(true),
                ..a.model.to_config()
            };
            let cfg = with_file(&a.config, flags)?.complete();
            let shape = a.shape.shape(cfg.dataset.unwrap_or(DatasetName::FashionMnist))?;
            let limit = a.memory_limit.as_deref().map(commands::budget::parse_size).transpose()?;
            commands::bench::bench(&cfg, shape, a.steps, a.warmup, a.json, limit)
        }
    }
}

/// The `hpff` binary: parses the arguments, runs, and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // --help and --version print as clap formats them; so does the help a bare
        // `hpff` gets.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return 2;
        }
        Err(e) => {
            eprintln!("hpff: {}", clap_one_line(&e.render().to_string()));
            return 2;
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hpff: error: {e}");
            1
        }
    }
}

/// Clap's multi-line usage error as one line: its `error: …` line, with a pointer to
/// `--help` instead of the usage block.
fn clap_one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("error: bad arguments");
    let tip = lines.find(|l| l.starts_with("tip:")).map(|t| format!("; {t}")).unwrap_or_default();
    format!("{first}{tip} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_are_one_line() {
        let e = Cli::try_parse_from(["hpff", "train", "--batch-size", "x"]).unwrap_err();
        let s = clap_one_line(&e.render().to_string());
        assert_eq!(
            s,
            "error: invalid value 'x' for '--batch-size <BATCH_SIZE>': invalid digit found in string (see --help)"
        );
        let e = Cli::try_parse_from(["hpff", "train", "--weight-decy", "1"]).unwrap_err();
        let s = clap_one_line(&e.render().to_string());
        assert!(
            s.starts_with("error: unexpected argument '--weight-decy' found; tip: a similar argument exists"),
            "{s}"
        );
        assert!(!s.contains('\n'));
    }

    #[test]
    fn flags_become_config_fields() {
        let cli = Cli::try_parse_from([
            "hpff",
            "train",
            "--dataset",
            "cifar10",
            "--method",
            "dgl",
            "--lambda1",
            "4,1",
            "--milestones",
            "10,20",
            "--no-nesterov",
            "--no-augment",
            "--splits",
            "1,4;2,4",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else { panic!() };
        let c = a.to_config();
        assert_eq!(c.dataset, Some(DatasetName::Cifar10));
        assert_eq!(c.lambda1, Some([4.0, 1.0]));
        assert_eq!(c.milestones, Some(vec![10, 20]));
        assert_eq!((c.nesterov, c.augment, c.hpff), (Some(false), Some(false), None));
        assert_eq!(c.epochs, None);
        assert!(Cli::try_parse_from(["hpff", "train", "--method", "sgd"]).is_err());
        assert!(Cli::try_parse_from(["hpff", "train", "--hpff", "--no-hpff"]).is_err());
        assert!(Cli::try_parse_from(["hpff", "train", "--lambda1", "a,b"]).is_err());
    }
}
