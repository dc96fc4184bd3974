//! The `strata` command line, built inside the test crate so its integration tests can run
//! brokers as processes (`CARGO_BIN_EXE_strata-node`): the same code as the `strata` binary.

fn main() -> std::process::ExitCode {
    strata_broker::cli::main()
}
