//! Checkpoints: a tensor file holds the tensors under the PyTorch reference's
//! `state_dict` names (parameters and BN running statistics), plus the SGD momentum
//! buffers under `optimizer.momentum.<name>`; `checkpoint.json` holds everything else
//! (the effective config, epoch, step, RNG, metrics history) and the name, size and
//! SHA-256 of the tensor file it belongs to.
//!
//! One rename is the commit point. Each save writes its tensors to a new file named by
//! epoch and content (`checkpoint-e0003-<hash>.safetensors`, staged as `*.tmp`, synced,
//! renamed), then `checkpoint.json.tmp`, then renames that over `checkpoint.json`.
//! Before that rename the previous JSON and the tensor file it names are untouched, so a
//! crash at any moment leaves a complete checkpoint: the old one or the new one. Only
//! after the commit are the old tensor file and any leftovers of interrupted saves
//! removed. A tensor file that does not match its JSON (tampered, or copied half-way) is
//! reported on loading, never resumed from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hpff_core::plan::{Plan, Tensor, TensorKind};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Shape};
use crate::device::Snapshot;
use crate::error::{io_err, Error, Result};
use crate::files::{rename_synced, tmp_path, write_synced};
use crate::metrics::{EpochMetrics, EvalResult};

/// The checkpoint's JSON inside a run's folder (the tensor file's name is in it).
pub const META_FILE: &str = "checkpoint.json";
/// Start and end of tensor file names: `checkpoint-e<epoch>-<hash>.safetensors`.
const TENSORS_PREFIX: &str = "checkpoint-e";
const TENSORS_EXT: &str = ".safetensors";
/// Prefix of the momentum buffers' names.
pub const MOMENTUM_PREFIX: &str = "optimizer.momentum.";

/// The tensor file a checkpoint's JSON belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything in `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub hpff_version: String,
    /// The completed config of the run.
    pub config: Config,
    /// The network's input shape (channels, image side, classes).
    pub shape: Shape,
    /// Epochs completed.
    pub epoch: u32,
    /// Training steps completed.
    pub global_step: u64,
    pub seed: u64,
    /// State of the data-order/augmentation generator (epoch `e` uses its fork `e`,
    /// so the order of every epoch is a function of the seed and the epoch alone).
    pub data_rng: [u64; 4],
    pub metrics: Vec<EpochMetrics>,
    pub best_accuracy: Option<f64>,
    /// Final test result, when the run finished.
    pub test: Option<EvalResult>,
    /// Seconds of training before this checkpoint (summed over resumed parts).
    pub elapsed_s: f64,
    pub tensors: TensorFile,
}

/// One tensor's shape and its bytes, borrowed from the snapshot: serializing then holds
/// the snapshot and the file's bytes, not a third copy of the model.
struct Bytes<'a> {
    shape: Vec<usize>,
    data: &'a [u8],
}

impl View for &Bytes<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn shape_of(t: &Tensor) -> Vec<usize> {
    t.shape[..t.rank()].to_vec()
}

// Safetensors stores little-endian values: the bytes of a slice of f32, as they are in memory.
#[cfg(target_endian = "big")]
compile_error!("checkpoints are written as the in-memory bytes of f32 values, which safetensors wants little-endian");

fn le_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// The safetensors bytes of a model's parameters, BN statistics and momentum.
pub fn tensors_bytes(plan: &Plan, model: &Snapshot) -> Result<Vec<u8>> {
    let mut items: Vec<(String, Bytes)> = Vec::new();
    plan.for_each_tensor(|t| {
        let src = match t.kind {
            TensorKind::Param => &model.params,
            TensorKind::State => &model.state,
        };
        items.push((t.name.to_string(), Bytes { shape: shape_of(&t), data: le_bytes(&src[t.off..t.off + t.len]) }));
        if t.kind == TensorKind::Param {
            items.push((
                format!("{MOMENTUM_PREFIX}{}", t.name),
                Bytes { shape: shape_of(&t), data: le_bytes(&model.momentum[t.off..t.off + t.len]) },
            ));
        }
    });
    // One metadata entry: a HashMap's order varies between processes, and the same
    // tensors must give the same bytes (and SHA-256).
    let info: Option<HashMap<String, String>> = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    safetensors::serialize(items.iter().map(|(n, b)| (n.as_str(), b)), &info)
        .map_err(|e| Error::msg(format!("cannot serialize the checkpoint tensors: {e}")))
}

/// Lower-case hex SHA-256 of `b`, as recorded in `checkpoint.json`.
pub fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// A checkpoint staged in a run's folder: its tensor file in place under a new name and
/// its JSON written as `checkpoint.json.tmp`; nothing refers to either yet.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    tensors: String,
}

impl Staged {
    /// The commit point: renames the staged JSON over `checkpoint.json`; then removes the
    /// tensor files no JSON refers to any more (the previous one, leftovers of crashes).
    pub fn commit(self) -> Result<()> {
        let json = self.dir.join(META_FILE);
        rename_synced(&tmp_path(&json), &json)?;
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with(TENSORS_PREFIX)
                    && (name.ends_with(TENSORS_EXT) || name.ends_with(&format!("{TENSORS_EXT}.tmp")));
                if ours && name != self.tensors {
                    let _ = std::fs::remove_file(ent.path()); // a leftover costs disk, not correctness
                }
            }
        }
        Ok(())
    }
}

/// Stages a checkpoint in `dir` (see [`Staged::commit`]); `meta.tensors` is filled in here.
pub fn stage(dir: &Path, plan: &Plan, model: &Snapshot, meta: &mut Meta) -> Result<Staged> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create the folder", e))?;
    let bytes = tensors_bytes(plan, model)?;
    let sha256 = sha256_hex(&bytes);
    let file = format!("{TENSORS_PREFIX}{:04}-{}{TENSORS_EXT}", meta.epoch, &sha256[..16]);
    let path = dir.join(&file);
    // The same name means the same bytes (the final save after the last epoch rewrites
    // that epoch's tensors): the file in place is already right.
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        write_synced(&tmp_path(&path), &bytes)?;
        rename_synced(&tmp_path(&path), &path)?;
    }
    meta.tensors = TensorFile { file: file.clone(), bytes: bytes.len() as u64, sha256 };
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::msg(format!("{}: cannot record the checkpoint: {e}", dir.display())))?;
    write_synced(&tmp_path(&dir.join(META_FILE)), &json)?;
    pause_for_crash_tests(dir, meta.epoch);
    Ok(Staged { dir: dir.to_path_buf(), tensors: file })
}

/// Crash tests kill `hpff train` inside the commit window: with `HPFF_PAUSE_BEFORE_COMMIT`
/// set to an epoch, the save of that epoch creates `paused-before-commit` in the run
/// folder and waits (to be killed) just before the commit rename.
fn pause_for_crash_tests(dir: &Path, epoch: u32) {
    if std::env::var("HPFF_PAUSE_BEFORE_COMMIT").is_ok_and(|e| e == epoch.to_string()) {
        let _ = std::fs::write(dir.join("paused-before-commit"), b"");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Bytes a checkpoint of `plan` takes on disk, at most (tensors, their header, the JSON).
pub fn bytes_bound(plan: &Plan) -> u64 {
    let floats = 2 * plan.params + plan.state;
    floats as u64 * 4 + 64 * 1024 + 1024 * 1024
}

/// Writes a checkpoint into `dir` atomically.
pub fn save(dir: &Path, plan: &Plan, model: &Snapshot, meta: &mut Meta) -> Result<()> {
    stage(dir, plan, model, meta)?.commit()
}

/// A checkpoint read from disk, its tensor file verified against its JSON.
#[derive(Debug)]
pub struct Loaded {
    pub meta: Meta,
    pub json_path: PathBuf,
    tensors: Vec<u8>,
}

/// The JSON of a checkpoint given as its folder, its JSON or its tensor file.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(META_FILE)
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        path.parent().unwrap_or(Path::new(".")).join(META_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Reads and verifies a checkpoint (folder, `checkpoint.json` or `.safetensors`).
pub fn load(path: &Path) -> Result<Loaded> {
    let json_path = resolve(path);
    let text = std::fs::read(&json_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::msg(format!(
                "{}: no checkpoint there (expected {META_FILE} written by hpff train)",
                json_path.display()
            ))
        } else {
            io_err(&json_path, "read", e)
        }
    })?;
    let meta: Meta = serde_json::from_slice(&text)
        .map_err(|e| Error::msg(format!("{}: not a valid hpff checkpoint: {e}", json_path.display())))?;
    let dir = json_path.parent().unwrap_or(Path::new("."));
    // A plain name in the same folder: a tampered JSON must not make us read elsewhere.
    if Path::new(&meta.tensors.file).file_name().is_none_or(|n| n != meta.tensors.file.as_str()) {
        return Err(Error::msg(format!(
            "{}: names the tensor file {:?}, which is not a file name in its folder",
            json_path.display(),
            meta.tensors.file
        )));
    }
    let tpath = dir.join(&meta.tensors.file);
    let tensors = std::fs::read(&tpath).map_err(|e| io_err(&tpath, "read", e))?;
    if tensors.len() as u64 != meta.tensors.bytes || sha256_hex(&tensors) != meta.tensors.sha256 {
        return Err(Error::msg(format!(
            "{}: does not match {} ({} bytes, expected {} with SHA-256 {}): the checkpoint is corrupt or was interrupted while being written",
            tpath.display(),
            json_path.display(),
            tensors.len(),
            meta.tensors.bytes,
            meta.tensors.sha256
        )));
    }
    SafeTensors::deserialize(&tensors)
        .map_err(|e| Error::msg(format!("{}: not a valid safetensors file: {e}", tpath.display())))?;
    Ok(Loaded { meta, json_path, tensors })
}

impl Loaded {
    /// The checkpoint's parameters and BN statistics (and, with `momentum`, the momentum
    /// buffers; else zeros), checking that every tensor `plan` has is there with the same
    /// shape and that the checkpoint has no others.
    pub fn restore(&self, plan: &Plan, momentum: bool) -> Result<Snapshot> {
        let mut model = Snapshot::zeros(plan);
        let st = SafeTensors::deserialize(&self.tensors).map_err(|e| Error::msg(e.to_string()))?;
        let what = self.json_path.display().to_string();
        let mismatch = |detail: String| {
            Error::msg(format!(
                "checkpoint {what} does not fit this model: {detail} (was it trained with another --arch, --method, --k or dataset?)"
            ))
        };
        let mut wanted = Vec::new();
        let mut err = None;
        plan.for_each_tensor(|t| {
            let name = t.name.to_string();
            let mut jobs = vec![(name.clone(), t.kind == TensorKind::State, false)];
            if t.kind == TensorKind::Param {
                let m = format!("{MOMENTUM_PREFIX}{name}");
                if momentum {
                    jobs.push((m.clone(), false, true));
                }
                wanted.push(m);
            }
            wanted.push(name);
            for (n, is_state, is_momentum) in jobs {
                if err.is_some() {
                    return;
                }
                let v = match st.tensor(&n) {
                    Ok(v) => v,
                    Err(_) => {
                        err = Some(mismatch(format!("it has no tensor {n}")));
                        return;
                    }
                };
                let want = shape_of(&t);
                if v.dtype() != Dtype::F32 || v.shape() != want.as_slice() || v.data().len() != 4 * t.len {
                    err = Some(mismatch(format!("{n} is {:?} {:?} there, F32 {:?} here", v.dtype(), v.shape(), want)));
                    return;
                }
                let dst = match (is_state, is_momentum) {
                    (true, _) => &mut model.state,
                    (false, true) => &mut model.momentum,
                    (false, false) => &mut model.params,
                };
                // A f32 slice is always aligned as bytes.
                bytemuck::cast_slice_mut::<f32, u8>(&mut dst[t.off..t.off + t.len]).copy_from_slice(v.data());
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        let wanted: std::collections::HashSet<String> = wanted.into_iter().collect();
        let mut extra: Vec<String> = st.names().into_iter().filter(|n| !wanted.contains(n.as_str())).cloned().collect();
        extra.sort();
        if let Some(n) = extra.first() {
            return Err(mismatch(format!("it has {} tensor(s) this model lacks, e.g. {n}", extra.len())));
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetName;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::{Partition, TableKind};
    use hpff_core::rng::Rng;

    fn plan(depth: usize, base: Base, hpff: bool) -> Plan {
        let a = Arch::resnet(depth, 1, 8, 10).unwrap();
        let p = Partition::for_k(&a, 3, TableKind::Reference).unwrap();
        Plan::new(a, p, Method::reference(base, hpff), 4, [0.0; 4], [1.0; 4]).unwrap()
    }

    fn meta(epoch: u32) -> Meta {
        Meta {
            hpff_version: "test".into(),
            config: Config { dataset: Some(DatasetName::FashionMnist), ..Config::default() }.complete(),
            shape: Shape { c: 1, image: 8, classes: 10 },
            epoch,
            global_step: 7,
            seed: 3,
            data_rng: Rng::new(3).state(),
            metrics: vec![],
            best_accuracy: Some(0.5),
            test: None,
            elapsed_s: 1.0,
            tensors: TensorFile { file: String::new(), bytes: 0, sha256: String::new() },
        }
    }

    fn model(p: &Plan, seed: u64) -> Snapshot {
        let mut a = Snapshot::init(p, &mut Rng::new(seed));
        for (i, v) in a.momentum.iter_mut().enumerate() {
            *v = i as f32 * 0.5;
        }
        a
    }

    #[test]
    fn round_trip_names_shapes_and_values() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(8, Base::InfoPro, true);
        let a = model(&p, 1);
        let mut m = meta(2);
        save(d.path(), &p, &a, &mut m).unwrap();
        assert!(m.tensors.file.starts_with("checkpoint-e0002-") && m.tensors.file.ends_with(".safetensors"));
        let st_bytes = std::fs::read(d.path().join(&m.tensors.file)).unwrap();
        let st = SafeTensors::deserialize(&st_bytes).unwrap();
        assert_eq!(st.tensor("conv1.weight").unwrap().shape(), &[16, 1, 3, 3]);
        assert!(st.tensor("bn1.running_var").is_ok());
        assert!(st.tensor("optimizer.momentum.conv1.weight").is_ok());
        let l = load(d.path()).unwrap();
        assert_eq!(l.meta.epoch, 2);
        assert_eq!(l.meta.tensors.sha256.len(), 64);
        assert_eq!(l.restore(&p, true).unwrap(), a);
        // Without momentum: buffers zeroed.
        let b = l.restore(&p, false).unwrap();
        assert_eq!((&b.params, &b.state), (&a.params, &a.state));
        assert!(b.momentum.iter().all(|&v| v == 0.0));
        // By the .safetensors path too.
        assert!(load(&d.path().join(&m.tensors.file)).is_ok());
        // Another model: a clear error.
        let q = plan(14, Base::InfoPro, true);
        let e = l.restore(&q, true).unwrap_err().to_string();
        assert!(e.contains("does not fit this model"), "{e}");
        let q = plan(8, Base::Dgl, false);
        let e = l.restore(&q, true).unwrap_err().to_string();
        assert!(e.contains("does not fit this model"), "{e}");
    }

    #[test]
    fn unfinished_write_leaves_the_old_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let tensor_files = || {
            let mut v: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            v.sort();
            v
        };
        let p = plan(8, Base::Dgl, false);
        let a = model(&p, 1);
        let mut m1 = meta(1);
        save(d.path(), &p, &a, &mut m1).unwrap();
        let b = model(&p, 2);
        let mut m2 = meta(2);
        let staged = stage(d.path(), &p, &b, &mut m2).unwrap();
        // "Crash" before the commit: both tensor files exist, the old checkpoint loads.
        assert_eq!(tensor_files(), vec![m1.tensors.file.clone(), m2.tensors.file.clone()]);
        let l = load(d.path()).unwrap();
        assert_eq!(l.meta.epoch, 1);
        assert_eq!(l.restore(&p, true).unwrap().params, a.params);
        // A leftover of an interrupted tensor write is cleaned up by the next commit.
        std::fs::write(d.path().join("checkpoint-e0009-0000000000000000.safetensors.tmp"), b"x").unwrap();
        staged.commit().unwrap();
        let l = load(d.path()).unwrap();
        assert_eq!(l.meta.epoch, 2);
        assert_eq!(l.restore(&p, true).unwrap().params, b.params);
        assert_eq!(tensor_files(), vec![m2.tensors.file.clone()], "the old tensor file goes after the commit");
        assert!(!d.path().join("checkpoint-e0009-0000000000000000.safetensors.tmp").exists());
        // Saving the same epoch and tensors again (the final save) keeps one file.
        save(d.path(), &p, &b, &mut meta(2)).unwrap();
        assert_eq!(tensor_files(), vec![m2.tensors.file.clone()]);
        // A tampered tensor file: detected, not loaded.
        let tf = d.path().join(&m2.tensors.file);
        let mut bytes = std::fs::read(&tf).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&tf, &bytes).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt or was interrupted"), "{e}");
        // A JSON naming a file outside its folder.
        let mut m = load_meta(d.path());
        m.tensors.file = "../elsewhere.safetensors".into();
        std::fs::write(d.path().join(META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a file name in its folder"), "{e}");
        // Garbage JSON and a missing folder.
        std::fs::write(d.path().join(META_FILE), b"{").unwrap();
        assert!(load(d.path()).unwrap_err().to_string().contains("not a valid hpff checkpoint"));
        let e = load(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("no checkpoint there"), "{e}");
    }

    fn load_meta(dir: &Path) -> Meta {
        serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).unwrap()).unwrap()
    }
}
