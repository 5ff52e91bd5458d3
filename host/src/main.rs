fn main() {
    eprintln!("hpff: the training CLI is not wired up yet (see the open issues)");
    std::process::exit(2);
}
