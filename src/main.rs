//! The `medgen` command line.

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
