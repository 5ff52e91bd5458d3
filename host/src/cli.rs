//! The `hpff` command line: `train`, `eval`, `plan` and `bench`.
//!
//! Every failure is one line `hpff: error: …` on stderr and exit code 1; malformed
//! flags are clap's usage errors, exit code 2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hpff_core::method::Base;

use crate::commands::train::{self, RunOptions};
use crate::config::{Config, DatasetName, ModelArgs, RunArgs, Shape, TrainingArgs};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::{budget, commands};

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

/// The network and method (shared by train, plan and bench): the hyper-parameters of
/// [`ModelArgs`], and `--no-hpff`, which is `hpff = false` in a config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelFlags {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Train the plain method (turns off the default HPFF)
    #[arg(long)]
    pub no_hpff: bool,
}

impl ModelFlags {
    fn apply(&self, c: &mut Config) {
        self.model.apply(c);
        if self.no_hpff {
            c.hpff = Some(false);
        }
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Continue a run from its checkpoint (folder, checkpoint.json or .safetensors); its config is the base that flags override
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Read settings from a TOML file (same names as the flags, with underscores); flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
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
        let mut c = Config::default();
        self.model.apply(&mut c);
        self.run.apply(&mut c);
        self.training.apply(&mut c);
        c
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
    /// Where to evaluate: cpu, cuda, cuda:N, reference or cuda-emu [default: the checkpoint's]
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
    pub model: ModelFlags,
    #[command(flatten)]
    pub shape: ShapeArgs,
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
    /// Cut the modules into W pipeline stages, as `mpirun -np W hpff train --pipeline
    /// --balance flops` does (training balances by measured time unless told so), and print
    /// each stage's bound; --memory-limit then applies to every stage
    #[arg(long, value_name = "W")]
    pub pipeline: Option<usize>,
    /// With --pipeline: modules per stage, bottom up (e.g. 3,5) [default: balanced by FLOPs]
    #[arg(long, value_delimiter = ',', value_name = "N1,N2,...", requires = "pipeline")]
    pub stages: Vec<usize>,
    /// With --pipeline: plan the stages for micro-batches of --batch-size / M images
    #[arg(long, value_name = "M", default_value_t = 1, requires = "pipeline")]
    pub micro_batches: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub run: RunArgs,
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
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// The config file (if any) with the command line's flags over it. A flag that only the
/// local methods read is refused when the method is e2e: it would silently do nothing.
/// (Only flags: a config file may be shared between methods.)
fn with_file(file: &Option<PathBuf>, flags: Config) -> Result<Config> {
    let merged = match file {
        Some(p) => Config::from_toml_file(p)?.merge(&flags),
        None => flags.clone(),
    };
    if let (Base::E2e, Some(flag)) = (merged.settings().method.base(), flags.local_only_given()) {
        return Err(Error::msg(format!(
            "{flag} applies to the local methods (greedy, dgl, infopro); e2e trains the whole network as one module without auxiliary nets"
        )));
    }
    Ok(merged)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let cfg = with_file(&a.config, a.to_config())?;
            let memory_limit = a.memory_limit.as_deref().map(budget::parse_size).transpose()?;
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
            let limit = a.memory_limit.as_deref().map(budget::parse_size).transpose()?;
            commands::eval::eval(&a.checkpoint, &over, a.json, limit)
        }
        Command::Plan(a) => {
            let mut flags = Config::default();
            a.model.apply(&mut flags);
            let cfg = with_file(&a.config, flags)?.settings();
            let shape = a.shape.shape(cfg.dataset)?;
            let limit = a.memory_limit.as_deref().map(budget::parse_size).transpose()?;
            let pipeline = a.pipeline.map(|w| commands::plan::Stages {
                workers: w,
                by_hand: &a.stages,
                micro_batches: a.micro_batches,
            });
            commands::plan::plan(&cfg, shape, a.json, a.ops, limit, pipeline)
        }
        Command::Bench(a) => {
            let mut flags = Config::default();
            a.model.apply(&mut flags);
            a.run.apply(&mut flags);
            let cfg = with_file(&a.config, flags)?.settings();
            let shape = a.shape.shape(cfg.dataset)?;
            let limit = a.memory_limit.as_deref().map(budget::parse_size).transpose()?;
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
    if let Err(e) = crate::cpu::apply_isa_env() {
        eprintln!("hpff: error: {}", crate::error::report(&e));
        return 2;
    }
    let comm = match crate::dist::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hpff: error: {}", crate::error::report(&e));
            return 2;
        }
    };
    match run(cli) {
        Ok(()) => {
            comm.finish();
            0
        }
        // One rank alone: it prints and ends the job, so that no other rank waits for it
        // in a collective forever (most errors happen on every rank alike; rank 0's line
        // then comes first).
        Err(e) if comm.size() > 1 => {
            let who =
                if comm.rank() == 0 { String::new() } else { format!(" (rank {} of {})", comm.rank(), comm.size()) };
            if comm.rank() != 0 {
                // An error every rank meets is rank 0's line alone: its abort ends this
                // process during the wait. An error of this rank alone still prints.
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            eprintln!("hpff: error{who}: {}", crate::error::report(&e));
            comm.abort(1)
        }
        Err(e) => {
            eprintln!("hpff: error: {}", crate::error::report(&e));
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

    /// clap's own checks of the command line (a debug build runs them at every start and
    /// panics on a violation; release builds, which the tests use, skip them).
    #[test]
    fn the_command_line_passes_clap_checks() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

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
