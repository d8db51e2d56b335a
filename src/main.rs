//! The `sluice` binary: everything lives in the library; this only hands over the process.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
