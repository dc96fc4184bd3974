//! `strata-s3`: an S3-compatible server (the `s3s-fs` crate) for tests and local trials, the
//! same one the in-process tests use, as a program to put in a container image
//! (`deploy/build-images.sh`). Buckets are directories under `--root`.
//!
//! ```sh
//! strata-s3 --listen 0.0.0.0:9000 --root /data
//! ```
//!
//! Credentials come from `S3_ACCESS_KEY` / `S3_SECRET_KEY` (default: the test suite's pair).

use std::io::Write;
use std::path::PathBuf;

use strata_tests::s3::{ACCESS_KEY, SECRET_KEY, serve};

fn usage() -> ! {
    eprintln!("usage: strata-s3 [--listen HOST:PORT] [--root DIR]  (default 0.0.0.0:9000, /data)");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen = "0.0.0.0:9000".to_owned();
    let mut root = PathBuf::from("/data");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--root", Some(v)) => root = v.into(),
            _ => usage(),
        }
    }
    let access = std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| ACCESS_KEY.into());
    let secret = std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| SECRET_KEY.into());
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!("strata-s3: cannot create {}: {e}", root.display());
        std::process::exit(1);
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("strata-s3: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let serving = match serve(listener, &root, &access, &secret) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strata-s3: cannot serve {}: {e}", root.display());
            std::process::exit(1);
        }
    };
    // The line readiness checks wait for (testcontainers, compose health checks).
    let _ = writeln!(
        std::io::stdout(),
        "strata-s3 serving {} on {listen}",
        root.display()
    );
    tokio::select! {
        () = serving => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
