//! `strata`: a Kafka-compatible broker. With no arguments it runs a single node with an
//! embedded controller, data under `./strata-data`, Kafka on 127.0.0.1:9092.

fn main() -> std::process::ExitCode {
    strata_broker::cli::main()
}
