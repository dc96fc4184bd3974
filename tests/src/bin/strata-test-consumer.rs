//! `strata-test-consumer`: a librdkafka group member in a process of its own, so a test can
//! crash it (SIGKILL) where an in-process consumer could only leave politely.
//!
//! ```sh
//! strata-test-consumer <bootstrap> <group> <topic> [classic|consumer]
//! ```
//!
//! For each record it prints `processing <partition> <offset> <value>`, commits the offset
//! after it synchronously, then prints `committed <partition> <offset> <value>`; a record is
//! consumed once its commit is acknowledged. When its standard input closes it leaves the
//! group (closing the consumer) and exits; killed, it leaves nothing behind but its session.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, group, topic, rest @ ..] = args.as_slice() else {
        eprintln!("usage: strata-test-consumer <bootstrap> <group> <topic> [classic|consumer]");
        std::process::exit(2);
    };
    let protocol = rest.first().map_or("consumer", String::as_str);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| {
            eprintln!("consumer: {e}");
            std::process::exit(1)
        });
    if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
        eprintln!("subscribe: {e}");
        std::process::exit(1);
    }
    let leave = Arc::new(AtomicBool::new(false));
    let flag = leave.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::SeqCst);
    });
    let mut out = std::io::stdout().lock();
    while !leave.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let (p, o) = (m.partition(), m.offset());
                let _ = writeln!(out, "processing {p} {o} {value}");
                let _ = out.flush();
                match consumer.commit_message(&m, CommitMode::Sync) {
                    Ok(()) => {
                        let _ = writeln!(out, "committed {p} {o} {value}");
                        let _ = out.flush();
                    }
                    Err(e) => eprintln!("commit of {p}@{o}: {e}"),
                }
            }
            Some(Err(e)) => eprintln!("poll: {e}"),
            None => {}
        }
    }
    drop(consumer);
    let _ = writeln!(out, "left");
}
