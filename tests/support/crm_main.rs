//! The `crm` command line, run by the end-to-end tests as real processes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    crm::cli::main()
}
