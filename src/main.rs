//! The `medgen` command line.

mod cli;

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`medgen ops | head`); Rust's runtime ignores SIGPIPE, which turns it into a panic in println!.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = cli::main();
    std::process::exit(code);
}
