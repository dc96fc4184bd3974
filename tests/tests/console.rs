//! The web console opened in a real headless browser (Debian's chromium), as an operator
//! opens it: each page renders without script errors and shows what the test created — a
//! topic, its partitions' upload lag, a group's lag, records in the browser.
//!
//! Needs `chromium` (or `chromium-browser`) on the PATH; without it the test says so and
//! passes, unless `STRATA_REQUIRE_CHROMIUM=1` (as CI sets after installing it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_client::{Client, NewRecord};
use strata_tests::TestBroker;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
}

/// Opens `url` headless: the DOM after loading, and what the browser logged.
fn open(browser: &Path, url: &str, screenshot: Option<&Path>) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(to) => cmd.arg(format!("--screenshot={}", to.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    assert!(out.status.success(), "chromium on {url}: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console messages the page logged (script errors among them).
fn console_messages(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("CONSOLE")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_topics_upload_lag_groups_and_records_in_a_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("STRATA_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "STRATA_REQUIRE_CHROMIUM=1 but no chromium on the PATH"
        );
        eprintln!("no chromium on the PATH: the console's browser test is skipped");
        return;
    };
    let broker = TestBroker::start_with(|c| {
        c.object_store.upload_interval_ms = 200;
        c.topics.flush_check_interval_ms = 200;
    })
    .await;
    let http: SocketAddr = broker.http_addr().expect("the HTTP listener runs");
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let configs = BTreeMap::from([("segment.bytes".to_owned(), "4096".to_owned())]);
    client
        .create_topic("orders", 2, 1, &configs)
        .await
        .expect("create");
    for i in 0..200 {
        let record = NewRecord {
            key: Some(Bytes::from(format!("order-{i}"))),
            value: Some(Bytes::from(format!(
                r#"{{"id":{i},"item":"widget <b>{i}</b>","paid":true}}"#
            ))),
            headers: vec![("source".to_owned(), Some(Bytes::from_static(b"web")))],
            ..NewRecord::default()
        };
        client
            .produce("orders", i % 2, &[record], -1)
            .await
            .expect("produce");
    }
    let committed = BTreeMap::from([(("orders".to_owned(), 0), 10)]);
    client
        .commit_offsets("billing", &committed)
        .await
        .expect("commit");
    // Segments uploaded, and uploads settled (all but the active segment), so the ranges
    // and the lag the pages show are the cluster's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let before = client.tiering_status("orders").await.expect("tiering");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let after = client.tiering_status("orders").await.expect("tiering");
        if before == after && after.partitions.iter().all(|p| p.remote_end.is_some()) {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "uploads never settled: {after:?}"
        );
    };
    let lag0 = status.partitions[0].upload_lag.expect("tiered");

    let base = format!("http://{http}");
    let pages: [(&str, &[&str]); 6] = [
        ("/", &["Brokers", "Consumer groups", "Partitions"]),
        ("/topics", &["orders", "__consumer_offsets"]),
        (
            "/topics/orders",
            &["Upload lag", "In object storage", "segment.bytes", "4096"],
        ),
        (
            "/topics/orders/records?partition=0&offset=0&count=5&format=json",
            &[
                "order-0",
                "&lt;b&gt;0&lt;/b&gt;",
                "\"paid\": true",
                "source",
            ],
        ),
        ("/groups", &["billing"]),
        ("/groups/billing", &["Offsets and lag", "orders"]),
    ];
    let browser = browser.clone();
    let checks = tokio::task::spawn_blocking(move || {
        for (path, wanted) in pages {
            let (dom, log) = open(&browser, &format!("{base}{path}"), None);
            for w in wanted {
                assert!(dom.contains(w), "{path} shows {w:?}:\n{dom}");
            }
            assert!(
                !dom.contains("did not answer"),
                "{path} reached the cluster:\n{dom}"
            );
            let messages = console_messages(&log);
            assert!(messages.is_empty(), "{path} logged {messages:?}");
        }
        // The topic page's partition 0 row shows the upload lag the cluster reports.
        let (dom, _) = open(&browser, &format!("{base}/topics/orders"), None);
        assert!(
            dom.contains(&format!(">{lag0}<")),
            "upload lag {lag0} on the topic page:\n{dom}"
        );
        // And the group's lag: 100 records in partition 0, 10 committed.
        let (dom, _) = open(&browser, &format!("{base}/groups/billing"), None);
        assert!(dom.contains(">90<"), "lag 90 on the group page:\n{dom}");
        let shot = std::env::temp_dir().join("strata-console-topic.png");
        let _ = std::fs::remove_file(&shot);
        open(&browser, &format!("{base}/topics/orders"), Some(&shot));
        let png = std::fs::read(&shot).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        eprintln!("screenshot of the topic page: {}", shot.display());
    });
    checks.await.expect("browser checks");
    broker.stop().await;
}
