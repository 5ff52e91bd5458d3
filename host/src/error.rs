//! The CLI's error: one line of text, printed as `hpff: error: …`.

use std::fmt;

/// A failure of a command, as one line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message (newlines are folded into `; `).
    pub fn msg(s: impl Into<String>) -> Error {
        let s: String = s.into();
        Error(one_line(&s))
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error(format!("{what}: {}", self.0))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

fn one_line(s: &str) -> String {
    let parts: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    parts.join("; ")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

macro_rules! from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::msg(e.to_string())
            }
        }
    )*};
}

from_display!(crate::data::DataError, hpff_core::plan::PlanError, hpff_core::exec::ExecError);
#[cfg(feature = "cuda")]
from_display!(hpff_kernels::CudaError);

/// `Result` with the CLI's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Adds the path to an I/O error.
pub fn io_err(path: &std::path::Path, what: &str, e: std::io::Error) -> Error {
    Error::msg(format!("{}: cannot {what}: {e}", path.display()))
}
