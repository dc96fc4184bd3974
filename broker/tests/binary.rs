//! The `strata` binary as a user runs it: bad config refused with the key named; SIGTERM
//! shuts it down cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

#[test]
fn a_bad_setting_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(STRATA)
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--set", "kafka.listen=\"nowhere\""])
        .env("RUST_LOG", "error")
        .output()
        .expect("run strata");
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("kafka.listen"), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(STRATA)
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--log-format", "json", "--set", "kafka.listen=\"nowhere\""])
        .env("RUST_LOG", "error")
        .output()
        .expect("run strata");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("kafka.listen"))),
        "{text}"
    );
}

#[test]
fn sigterm_shuts_the_broker_down_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(STRATA)
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--set",
            "controller.listen=\"127.0.0.1:0\"",
            "--set",
            "http.listen=\"127.0.0.1:0\"",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strata");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut serving = false;
    for line in lines.by_ref() {
        let line = line.expect("log line");
        if line.contains("serving Kafka clients") {
            serving = true;
            break;
        }
        assert!(Instant::now() < deadline, "never started");
    }
    if !serving {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!(
            "strata exited before serving: {:?}; stderr: {err}",
            child.wait()
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "exit {exit:?}; log tail {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("strata broker stopped")),
        "no clean stop in {rest:?}"
    );
}
