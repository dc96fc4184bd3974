//! Latency at rate and the broker's CPU cost per GB: the `strata` binary run as a user runs
//! it (one node, a local directory as object store, fsync on acks=all, tiering on), with
//! librdkafka as the client.
//!
//! `cargo bench -p strata-tests --bench latency`; `STRATA_BENCH_BINARY` measures another
//! build of `strata` with the same steps; `STRATA_BENCH_RATES` (records/s, default
//! `20000,50000`), `STRATA_BENCH_SECONDS` (default 10) and `STRATA_BENCH_MIB` (default 1024).
//!
//! Figures, in one run:
//! - at each rate, 1 KiB records over 4 partitions (acks=all, idempotent, `linger.ms=1`):
//!   end-to-end latency (send to a tailing consumer's receipt) and acknowledgement latency,
//!   p50/p99/p99.9/max, and the broker's CPU over the run;
//! - broker CPU-seconds per GB produced (as fast as librdkafka sends, linger 5 ms, until the
//!   last acknowledgement), then what the broker spends after it until it idles (uploading
//!   what was produced), and per GB consumed (a consumer reading it all from the start, once
//!   the broker is idle, so the uploads are not counted as the consumer's).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

mod common;

use common::process::BrokerProcess;
use common::{
    BenchResult, Load, RECORD_BYTES, consume_from_start, create_topic, end_to_end_with, env_list,
    env_or, print_latencies, producer, send_all,
};

const PARTITIONS: i32 = 4;

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let rates: Vec<u64> = env_list("STRATA_BENCH_RATES", &[20_000, 50_000]);
    let seconds = env_or("STRATA_BENCH_SECONDS", 10);
    let mib: u64 = env_or("STRATA_BENCH_MIB", 1024);
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::new(dir.path(), &[])?;
    broker.spawn()?;
    broker.connect(Duration::from_secs(60)).await?;
    println!(
        "librdkafka {} against {} ({}), {RECORD_BYTES}-byte records over {PARTITIONS} partitions",
        rdkafka::util::get_rdkafka_version().1,
        broker.addr,
        broker.binary.display()
    );

    for (i, rate) in rates.into_iter().enumerate() {
        let topic = format!("rate-{i}-{rate}");
        create_topic(&broker.addr, &topic, PARTITIONS, 1, &[]).await?;
        let load = Load {
            partitions: PARTITIONS,
            rate,
            seconds,
            linger_ms: 1,
        };
        let cpu = broker.cpu_seconds()?;
        let started = Instant::now();
        let measured = end_to_end_with(&broker.addr, &topic, &load).await?;
        let busy = (broker.cpu_seconds()? - cpu) / started.elapsed().as_secs_f64();
        let what = format!(
            "{rate} records/s ({:.0} MB/s) for {seconds} s",
            (rate * RECORD_BYTES as u64) as f64 / 1e6
        );
        print_latencies(&format!("{what}, end-to-end"), measured.end_to_end);
        print_latencies(&format!("{what}, acknowledged"), measured.ack);
        println!("{what}, broker CPU {:.0}% of a core", busy * 100.0);
    }

    let records = mib * 1024 * 1024 / RECORD_BYTES as u64;
    let bytes = records * RECORD_BYTES as u64;
    let gb = bytes as f64 / 1e9;
    create_topic(&broker.addr, "bulk", PARTITIONS, 1, &[]).await?;
    let p = producer(&broker.addr, "5")?;
    let payload = vec![b'x'; RECORD_BYTES];
    let cpu = broker.cpu_seconds()?;
    let secs = send_all(&p, "bulk", records, &payload, |i| {
        (Some((i % PARTITIONS as u64) as i32), String::new())
    })
    .await?;
    let produce_cpu = broker.cpu_seconds()? - cpu;
    drop(p);
    println!(
        "produce {mib} MiB: {:.0} MB/s, broker {:.2} CPU-seconds per GB",
        bytes as f64 / secs / 1e6,
        produce_cpu / gb
    );
    let (settle_secs, settle_cpu, idle) = settle(&broker).await?;
    println!(
        "after the last ack: {settle_secs:.1} s until the broker idles{}, {:.2} CPU-seconds per \
         GB (tiering what was produced; {:.2} per GB with the produce)",
        if idle {
            ""
        } else {
            " (still busy after 120 s)"
        },
        settle_cpu / gb,
        (produce_cpu + settle_cpu) / gb
    );
    let cpu = broker.cpu_seconds()?;
    let addr = broker.addr.clone();
    let (secs, _) =
        tokio::task::spawn_blocking(move || consume_from_start(&addr, "bulk", PARTITIONS, records))
            .await??;
    let consume_cpu = broker.cpu_seconds()? - cpu;
    println!(
        "consume {mib} MiB: {:.0} MB/s, broker {:.2} CPU-seconds per GB",
        bytes as f64 / secs / 1e6,
        consume_cpu / gb
    );
    broker.stop("-TERM").await?;
    Ok(())
}

/// Waits (at most two minutes) until the broker has kept less than 5 % of a core busy for six
/// seconds (longer than `object_store.upload_interval_ms`, 5 s, so a tiering pass still to
/// come is waited for); returns the seconds and the CPU-seconds it used until it went idle,
/// and whether it did.
async fn settle(broker: &BrokerProcess) -> BenchResult<(f64, f64, bool)> {
    const WINDOW: Duration = Duration::from_millis(500);
    const IDLE_FOR: Duration = Duration::from_secs(6);
    let started = Instant::now();
    let first = broker.cpu_seconds()?;
    let (mut last, mut busy_until) = (first, (Duration::ZERO, first));
    while started.elapsed() < Duration::from_secs(120)
        && started.elapsed() - busy_until.0 < IDLE_FOR
    {
        tokio::time::sleep(WINDOW).await;
        let now = broker.cpu_seconds()?;
        if now - last >= 0.05 * WINDOW.as_secs_f64() {
            busy_until = (started.elapsed(), now);
        }
        last = now;
    }
    let idle = started.elapsed() - busy_until.0 >= IDLE_FOR;
    Ok((busy_until.0.as_secs_f64(), busy_until.1 - first, idle))
}
