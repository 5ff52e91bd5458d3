//! The one error type of the dataset layer. Every message is one line that names the
//! file (or folder) and says what is wrong with it.

use std::path::{Path, PathBuf};

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file exists but reading it failed.
    #[error("{}: cannot read: {}", .path.display(), one_line(&.source.to_string()))]
    Io { path: PathBuf, source: std::io::Error },
    /// A file or folder the loader needs is not there.
    #[error("{}: not found; {hint}", .path.display())]
    Missing { path: PathBuf, hint: String },
    /// The file does not start with the magic number of its format.
    #[error("{}: bad magic number {found} (expected {expected})", .path.display())]
    BadMagic { path: PathBuf, found: String, expected: String },
    /// The file ends before the data its header promises.
    #[error("{}: truncated: {detail}", .path.display())]
    Truncated { path: PathBuf, detail: String },
    /// The file's size or shape is not what its format (or its partner file) says.
    #[error("{}: wrong size: {detail}", .path.display())]
    WrongSize { path: PathBuf, detail: String },
    /// A label is outside the range of the dataset's classes.
    #[error("{}: label {label} of item {index} is out of range (expected {allowed})", .path.display())]
    LabelOutOfRange { path: PathBuf, index: usize, label: i64, allowed: String },
    /// An image file could not be decoded.
    #[error("{}: undecodable image: {detail}", .path.display())]
    Undecodable { path: PathBuf, detail: String },
    /// A class folder of an image-folder dataset holds no images.
    #[error("{}: empty class folder (no .png, .jpg or .jpeg files)", .path.display())]
    EmptyClass { path: PathBuf },
    /// Anything else wrong with the content of a file.
    #[error("{}: {detail}", .path.display())]
    Format { path: PathBuf, detail: String },
    /// A download failed or delivered the wrong bytes.
    #[error("{}: download of {url} failed: {detail}; {hint}", .path.display())]
    Download { path: PathBuf, url: String, detail: String, hint: String },
}

// One line for messages of external errors, which may carry newlines.
pub(crate) use crate::error::one_line;

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }
    pub(crate) fn truncated(path: &Path, detail: impl Into<String>) -> Self {
        DataError::Truncated { path: path.to_path_buf(), detail: one_line(&detail.into()) }
    }
    pub(crate) fn wrong_size(path: &Path, detail: impl Into<String>) -> Self {
        DataError::WrongSize { path: path.to_path_buf(), detail: one_line(&detail.into()) }
    }
    pub(crate) fn format(path: &Path, detail: impl Into<String>) -> Self {
        DataError::Format { path: path.to_path_buf(), detail: one_line(&detail.into()) }
    }
    pub(crate) fn label(path: &Path, index: usize, label: i64, allowed: impl Into<String>) -> Self {
        DataError::LabelOutOfRange { path: path.to_path_buf(), index, label, allowed: allowed.into() }
    }
    pub(crate) fn missing(path: &Path, hint: impl Into<String>) -> Self {
        DataError::Missing { path: path.to_path_buf(), hint: one_line(&hint.into()) }
    }
}

/// Reads a whole file, mapping "not found" to [`DataError::Missing`] with `hint`.
pub(crate) fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing(path, hint)
        } else {
            DataError::io(path, e)
        }
    })
}

/// Reads a file and gunzips it when it starts with the gzip magic (0x1f 0x8b),
/// whatever its name.
pub(crate) fn read_maybe_gz(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path, hint)?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        use std::io::Read;
        let mut out = Vec::with_capacity(raw.len() * 2);
        let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
        dec.read_to_end(&mut out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DataError::truncated(path, "the gzip stream ends early")
            } else {
                DataError::format(path, format!("corrupt gzip stream: {e}"))
            }
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_file() {
        let e = DataError::format(Path::new("/x/y.bin"), "a\nb  c");
        assert_eq!(e.to_string(), "/x/y.bin: a b c");
        let e = DataError::io(Path::new("/x/z"), std::io::Error::other("boom\nbang"));
        assert_eq!(e.to_string(), "/x/z: cannot read: boom bang");
    }

    #[test]
    fn gzip_is_detected_by_magic_not_name() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain-name.bin");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"hello world").unwrap();
        let gz = enc.finish().unwrap();
        std::fs::write(&p, &gz).unwrap();
        assert_eq!(read_maybe_gz(&p, "").unwrap(), b"hello world");
        std::fs::write(&p, &gz[..gz.len() - 12]).unwrap();
        let e = read_maybe_gz(&p, "").unwrap_err().to_string();
        assert!(e.contains("plain-name.bin: truncated"), "{e}");
        let q = dir.path().join("x.gz");
        std::fs::write(&q, b"not gz").unwrap();
        assert_eq!(read_maybe_gz(&q, "").unwrap(), b"not gz");
        let e = read_maybe_gz(&dir.path().join("nope"), "get it somewhere").unwrap_err();
        assert!(e.to_string().ends_with("nope: not found; get it somewhere"), "{e}");
    }
}
