//! The `hpff` command line (see [`hpff::cli`]).

fn main() {
    std::process::exit(hpff::cli::main());
}
