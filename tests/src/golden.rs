//! Loading the PyTorch golden fixtures of `tests/fixtures/golden/` (see `tools/golden/README.md`).

use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::exec::StepInput;
use hpff_core::method::{AuxHead, Base, Family, Levels, LocalLoss, Method, Pff};
use hpff_core::optim::Sgd;
use hpff_core::partition::Partition;
use hpff_core::plan::{LossKind, Plan, TensorKind};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::PathBuf;

/// The optimizer of every fixture.
pub const GOLDEN_SGD: Sgd = Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: true };

#[derive(Debug)]
/// One golden case: every tensor of the fixture by name, and the plan it describes.
pub struct Golden {
    pub name: String,
    pub tensors: HashMap<String, Vec<f32>>,
    pub plan: Plan,
    pub lr: f32,
    /// Per-tensor tolerances of a fixture that holds a float64 run (`f64_truth` in the
    /// generator): 8 × the float32 spread measured around it, at least 1e-4.
    pub tolerance: HashMap<String, f64>,
}

/// `$HPFF_FIXTURES` when set; else this crate's `fixtures/golden`, found from the build
/// path or, for a test binary copied to another machine, from the project root it runs in.
pub fn fixture_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HPFF_FIXTURES") {
        return PathBuf::from(d);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures/golden")
    }
}

/// The name of every fixture in [`fixture_dir`], sorted.
pub fn golden_cases() -> Vec<String> {
    let dir = fixture_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".safetensors").map(str::to_string))
        .collect();
    names.sort();
    names
}

impl Golden {
    /// The step-1 gradient of every parameter, laid out as the plan's gradient region.
    pub fn grads(&self) -> Vec<f32> {
        let mut g = vec![0.0; self.plan.params];
        self.plan.for_each_tensor(|t| {
            if t.kind == TensorKind::Param {
                g[t.off..t.off + t.len].copy_from_slice(self.get(&format!("grad.{}", t.name)));
            }
        });
        g
    }

    pub fn load(case: &str) -> Golden {
        let path = fixture_dir().join(format!("{case}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let cfg: serde_json::Value =
            serde_json::from_str(meta.metadata().as_ref().expect("metadata")["config"].as_str()).expect("config json");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                // Little-endian f32s (the machines that run the tests are little-endian), perhaps unaligned.
                let data = bytemuck::pod_collect_to_vec::<u8, f32>(v.data());
                (k, data)
            })
            .collect();
        let f = |k: &str| cfg[k].as_f64().unwrap_or_else(|| panic!("config {k}")) as f32;
        let u = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("config {k}")) as usize;
        let blocks = cfg.get("blocks").map_or(1, |b| b[0].as_u64().unwrap() as usize);
        let arch = if cfg.get("family").and_then(|f| f.as_str()) == Some("imagenet") {
            let a = Arch::resnet_imagenet(u("depth"), 3, u("image_size"), u("classes")).unwrap();
            let groups = cfg.get("groups").map_or(1, |g| g.as_u64().unwrap() as usize);
            let per_group = cfg.get("width_per_group").map_or(64, |g| g.as_u64().unwrap() as usize);
            a.with_width(u("width")).unwrap().with_groups(groups, per_group).unwrap()
        } else {
            Arch::resnet(6 * blocks + 2, 3, u("image_size"), u("classes")).unwrap()
        };
        let splits: Vec<(usize, usize)> = cfg["splits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
            .collect();
        let mut part = Partition::from_splits(&arch, splits).unwrap();
        part.k_label = u("k_label");
        let base = match cfg["method"].as_str().unwrap() {
            "e2e" => Base::E2e,
            "greedy" => Base::Greedy,
            "dgl" => Base::Dgl,
            "infopro" => Base::InfoPro,
            m => panic!("unknown method {m}"),
        };
        let hpff = cfg["hpff"].as_bool().unwrap();
        let imagenet_aux = cfg.get("aux_nets").and_then(|a| a.as_str()) == Some("imagenet");
        let mut method = Method::reference(base, hpff);
        if imagenet_aux {
            method.aux = Family::ImageNet;
            method.pff = if cfg["pff"].as_str() == Some("input") { Pff::Input } else { Pff::Output };
        } else if base != Base::E2e {
            method.head = AuxHead::parse(cfg["aux_head"].as_str().unwrap()).unwrap();
        }
        method.patches = u("patches");
        method.local_loss = match cfg["local_loss"].as_str().unwrap() {
            "ce" => LocalLoss::CrossEntropy,
            _ => LocalLoss::Contrast,
        };
        method.feature_dim = u("feature_dim");
        let pair = |k: &str| {
            let a = cfg[k].as_array().unwrap();
            [a[0].as_f64().unwrap() as f32, a[1].as_f64().unwrap() as f32]
        };
        method.lambda1 = pair("lambda1");
        method.lambda2 = pair("lambda2");
        method.wx = f("wx");
        method.wy = f("wy");
        method.levels = match cfg.get("levels").and_then(|l| l.as_str()) {
            Some("cascade") => Levels::Cascade,
            Some("independent") => Levels::Independent,
            _ => Levels::Both,
        };
        let tolerance = cfg
            .get("tolerance")
            .and_then(|t| t.as_object())
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect())
            .unwrap_or_default();
        let mut mean = [0.0; 4];
        let mut std = [1.0; 4];
        for c in 0..3 {
            mean[c] = cfg["mean"][c].as_f64().unwrap() as f32;
            std[c] = cfg["std"][c].as_f64().unwrap() as f32;
        }
        let plan = Plan::new(arch, part, method, u("batch"), mean, std).unwrap();
        Golden { name: case.to_string(), tensors, plan, lr: f("lr"), tolerance }
    }

    /// The tolerance of fixture tensor `key`: its own for a float64 fixture, else `default`.
    pub fn tol(&self, key: &str, default: f64) -> f64 {
        self.tolerance.get(key).copied().unwrap_or(default)
    }

    pub fn get(&self, key: &str) -> &[f32] {
        self.tensors.get(key).unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
    }

    /// The fixture's `init.*` tensors as a model (momentum zero).
    pub fn init(&self) -> Snapshot {
        self.model("init")
    }

    /// The tensors `{prefix}.*` (`init`, `step1`, `step3`) as a model (momentum zero).
    pub fn model(&self, prefix: &str) -> Snapshot {
        let mut m = Snapshot::zeros(&self.plan);
        self.plan.for_each_tensor(|t| {
            let dst = if t.kind == TensorKind::Param { &mut m.params } else { &mut m.state };
            let src = self.get(&format!("{prefix}.{}", t.name));
            assert_eq!(src.len(), t.len, "{}: size of {}", self.name, t.name);
            dst[t.off..t.off + t.len].copy_from_slice(src);
        });
        m
    }

    /// The labels of step `t`.
    pub fn labels(&self, t: usize) -> Vec<u32> {
        self.get(&format!("target.{t}")).iter().map(|&v| v as u32).collect()
    }

    /// The input of step `t` (call with the labels from [`Golden::labels`]).
    pub fn input<'a>(&'a self, t: usize, labels: &'a [u32]) -> StepInput<'a> {
        StepInput { x: self.get(&format!("input.{t}")), labels, lr: self.lr, sgd: GOLDEN_SGD }
    }

    /// The fixture's loss keys with the plan's slot for each.
    pub fn loss_keys(&self) -> Vec<(String, usize)> {
        let m = self.plan.modules();
        let mut v = Vec::new();
        let hpff = self.plan.method.hpff;
        if self.plan.method.base == Base::E2e {
            return vec![("ce".into(), LossKind::Ce.slot(0))];
        }
        for j in 0..m - 1 {
            let kinds: &[LossKind] = if hpff {
                &[LossKind::Independent, LossKind::CascadeDecoder, LossKind::CascadeClassifier]
            } else {
                &[LossKind::Decoder, LossKind::Classifier]
            };
            for k in kinds {
                let key = format!("m{j}.{}", k.name());
                if self.tensors.contains_key(&format!("loss.0.{key}")) {
                    v.push((key, k.slot(j)));
                }
            }
        }
        if hpff {
            for (key, kind) in [("last.x", LossKind::LastX), ("last.y", LossKind::LastY)] {
                // Without the independent level (the ImageNet recipe) there is no x path.
                if self.tensors.contains_key(&format!("loss.0.{key}")) {
                    v.push((key.into(), kind.slot(m - 1)));
                }
            }
        } else {
            v.push((format!("m{}.ce", m - 1), LossKind::Ce.slot(m - 1)));
        }
        v
    }
}

/// Largest |a − b| over the tensor, relative to the tensor's largest |b|, that scale floored
/// at 1e-3: a conv bias in front of a BN has a true gradient of zero, and both sides hold
/// rounding noise of about 1e-8 there, which only an absolute bound can judge.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64)).max(1e-3);
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}
