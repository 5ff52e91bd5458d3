//! The CLI's error: [`anyhow::Error`], which keeps the typed error it came from (a
//! [`crate::data::DataError`], a [`hpff_core::plan::PlanError`], …) as its cause, with
//! whatever context was added on the way up. [`report`] prints it as the one line
//! `hpff: error: …` that users see.

/// A failure of a command: the typed error it came from, with context.
pub type Error = anyhow::Error;

/// `Result` with the CLI's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path to an I/O error.
pub fn io_err(path: &std::path::Path, what: &str, e: std::io::Error) -> Error {
    Error::new(e).context(format!("{}: cannot {what}", path.display()))
}

/// The error and its causes on one line, outermost first, `: `-separated (like `{:#}`),
/// leaving out a cause whose text its wrapper already spells out.
pub fn report(e: &Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let s = one_line(&cause.to_string());
        if line.contains(&s) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&s);
    }
    line
}

/// Collapses a message onto one line, every run of whitespace (newlines included) one
/// space: external errors may carry newlines.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = io_err(std::path::Path::new("c.toml"), "read the config file", io);
        assert_eq!(report(&e), "c.toml: cannot read the config file: no such file");
        let e = Error::msg("bad config: invalid type\n  expected u32\n").context("c.toml");
        assert_eq!(report(&e), "c.toml: bad config: invalid type expected u32");
    }
}
