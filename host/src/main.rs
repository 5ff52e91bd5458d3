//! The `hpff` command line (see [`hpff::cli`]).

fn main() {
    // A reader that closes stdout early (`hpff plan --ops | head`) ends the program quietly,
    // as it does any Unix filter, instead of a panic on the failed write: Rust ignores
    // SIGPIPE unless told otherwise.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(hpff::cli::main());
}
