//! `stratactl`: see [`strata_client::cli`].

use std::io::Write;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    match strata_client::cli::run(std::env::args_os(), &mut input, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            let _ = writeln!(std::io::stderr(), "stratactl: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
