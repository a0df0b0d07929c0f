//! `crm`: one binary, many targets. `crm serve <service>` runs one service
//! (what a container runs); `crm up` runs the whole suite on localhost;
//! `crm migrate <service>` runs a store's migrations and exits; `crm bench`
//! measures a service under load.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    crm::cli::main()
}
