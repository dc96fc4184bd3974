//! The web console at `/` on the HTTP listener: brokers and the controller, topics with their
//! partitions, sizes, configs and tiered ranges, consumer groups with members and lag, and a
//! record browser. Server-rendered HTML (maud, which escapes every value: keys and values
//! are whatever producers sent), no scripts.
//!
//! The console reads the cluster as a Kafka client of this broker would (strata-client over
//! its own listener), so every page shows the whole cluster, not only what this broker hosts,
//! and needs nothing the Kafka protocol does not already answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use strata_client::{Client, ClientError, FetchedRecord};

/// How long a page waits for the cluster.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most records the browser shows at once.
const MAX_RECORDS: usize = 200;

/// Bytes of a key or value shown before it is cut.
const SHOWN_BYTES: usize = 4096;

/// Where the console connects: this broker's Kafka listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Console {
    kafka: SocketAddr,
}

impl Console {
    /// A console over the Kafka listener at `kafka` (an unspecified address means this
    /// host's loopback).
    pub(crate) fn new(kafka: SocketAddr) -> Self {
        let mut kafka = kafka;
        if kafka.ip().is_unspecified() {
            kafka.set_ip(match kafka {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Self { kafka }
    }

    async fn client(&self) -> Result<Client, ClientError> {
        Client::connect_with_timeout(&self.kafka.to_string(), CLIENT_TIMEOUT).await
    }
}

/// A page, or the error that stopped it.
type Page = Result<Markup, ClientError>;

fn respond(title: &str, page: Page) -> Response {
    match page {
        Ok(body) => Html(layout(title, body).into_string()).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Html(
                layout(
                    title,
                    html! { p.error { "The cluster did not answer: " (e.to_string()) } },
                )
                .into_string(),
            ),
        )
            .into_response(),
    }
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Strata" }
                style { (STYLE) }
            }
            body {
                nav {
                    a.brand href="/" { "Strata" }
                    a href="/" { "Cluster" }
                    a href="/topics" { "Topics" }
                    a href="/groups" { "Groups" }
                    a href="/metrics" { "Metrics" }
                    a href="/readyz" { "Readiness" }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
nav { background: #1d232a; padding: 10px 20px; }
nav a { color: #cfd6de; margin-right: 18px; text-decoration: none; }
nav a.brand { color: #fff; font-weight: 600; }
main { padding: 10px 20px 40px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0; }
th, td { border: 1px solid #dde1e6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.data { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; max-width: 60ch; }
.error { color: #b3261e; } .muted { color: #6b7480; }
form { background: #fff; border: 1px solid #dde1e6; padding: 8px 10px; display: inline-block; }
form label { margin-right: 12px; } input[type=number] { width: 9em; }
";

/// `/`: brokers, the controller, and a count of topics and groups.
pub(crate) async fn overview(State(c): State<Console>) -> Response {
    respond("Cluster", overview_page(&c).await)
}

async fn overview_page(c: &Console) -> Page {
    let client = c.client().await?;
    let (brokers, controller) = client.cluster().await?;
    let topics = client.topics().await?;
    let groups = client.list_groups().await?;
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let offline: usize = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader < 0)
        .count();
    let under: usize = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.isr.len() < p.replicas.len())
        .count();
    Ok(html! {
        h2 { "Brokers" }
        table {
            tr { th { "Id" } th { "Address" } th { "Rack" } th { "Role" } }
            @for b in &brokers {
                tr {
                    td.num { (b.id) }
                    td { (b.host) ":" (b.port) }
                    td { (b.rack.as_deref().unwrap_or("-")) }
                    td { @if b.id == controller { "broker, controller leader" } @else { "broker" } }
                }
            }
        }
        p.muted { "The controller quorum's leader is node " (controller) "." }
        h2 { "Summary" }
        table {
            tr { th { "Topics" } td.num { a href="/topics" { (topics.len()) } } }
            tr { th { "Partitions" } td.num { (partitions) } }
            tr { th { "Offline partitions" } td.num { (offline) } }
            tr { th { "Under-replicated partitions" } td.num { (under) } }
            tr { th { "Consumer groups" } td.num { a href="/groups" { (groups.len()) } } }
        }
    })
}

/// `/topics`: every topic.
pub(crate) async fn topics(State(c): State<Console>) -> Response {
    respond("Topics", topics_page(&c).await)
}

async fn topics_page(c: &Console) -> Page {
    let client = c.client().await?;
    let topics = client.topics().await?;
    Ok(html! {
        table {
            tr { th { "Topic" } th { "Partitions" } th { "Replicas" } th { "Internal" } }
            @for t in &topics {
                tr {
                    td { a href={ "/topics/" (urlencode(&t.name)) } { (t.name) } }
                    td.num { (t.partitions.len()) }
                    td.num { (t.partitions.first().map_or(0, |p| p.replicas.len())) }
                    td { @if t.internal { "yes" } }
                }
            }
        }
    })
}

/// `/topics/{name}`: partitions with placement, sizes and tiered ranges, configs, and the
/// record browser's form.
pub(crate) async fn topic(State(c): State<Console>, Path(name): Path<String>) -> Response {
    let title = format!("Topic {name}");
    respond(&title, topic_page(&c, &name).await)
}

async fn topic_page(c: &Console, name: &str) -> Page {
    let client = c.client().await?;
    let (info, configs) = client.describe_topic(name).await?;
    let tiering = client.tiering_status(name).await?;
    let sizes: BTreeMap<i32, i64> = client
        .log_dirs(name)
        .await?
        .into_iter()
        .map(|d| (d.partition, d.size_bytes))
        .collect();
    let tiered: BTreeMap<i32, _> = tiering
        .partitions
        .iter()
        .map(|p| (p.partition, p))
        .collect();
    let range = |a: i64, b: i64| match a < b {
        true => format!("{a} – {}", b - 1),
        false => "-".to_owned(),
    };
    Ok(html! {
        h2 { "Partitions" }
        table {
            tr {
                th { "Partition" } th { "Leader" } th { "Replicas" } th { "In sync" }
                th { "Local size" } th { "In object storage" } th { "On local disk" }
                th { "Log end" } th { "Upload lag (records)" }
            }
            @for p in &info.partitions {
                @let t = tiered.get(&p.partition);
                tr {
                    td.num { (p.partition) }
                    td.num { @if p.leader >= 0 { (p.leader) } @else { span.error { "none" } } }
                    td { (join(&p.replicas)) }
                    td { (join(&p.isr)) }
                    td.num { (sizes.get(&p.partition).map_or_else(|| "-".to_owned(), |b| bytes(*b))) }
                    td { (t.and_then(|t| t.remote_end.map(|r| range(t.log_start, r))).unwrap_or_else(|| "-".to_owned())) }
                    td { (t.map_or_else(|| "-".to_owned(), |t| range(t.local_start, t.log_end))) }
                    td.num { (t.map_or(-1, |t| t.log_end)) }
                    td.num {
                        @match t.and_then(|t| t.upload_lag) {
                            Some(lag) => (lag),
                            None => span.muted { "not tiered" },
                        }
                    }
                }
            }
        }
        h2 { "Records" }
        form method="get" action={ "/topics/" (urlencode(name)) "/records" } {
            label { "Partition " input type="number" name="partition" min="0" value="0"; }
            label { "From offset " input type="number" name="offset" min="0" placeholder="start"; }
            label { "or time (ms) " input type="number" name="timestamp" min="0"; }
            label { "Count " input type="number" name="count" min="1" max=(MAX_RECORDS) value="20"; }
            label { "As "
                select name="format" {
                    option value="text" { "text" }
                    option value="json" { "JSON" }
                    option value="hex" { "hex" }
                }
            }
            button type="submit" { "Read" }
        }
        h2 { "Configs" }
        table {
            tr { th { "Key" } th { "Value" } th { "Source" } }
            @for e in &configs {
                tr {
                    td { (e.name) }
                    td.data { (e.value.as_deref().unwrap_or("(hidden)")) }
                    td { @if e.explicit { "topic" } @else { span.muted { "default" } } }
                }
            }
        }
    })
}

/// The record browser's query: where to start and how to show bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordsQuery {
    #[serde(default)]
    partition: i32,
    #[serde(default, deserialize_with = "empty_is_none")]
    offset: Option<i64>,
    #[serde(default, deserialize_with = "empty_is_none")]
    timestamp: Option<i64>,
    #[serde(default, deserialize_with = "empty_is_none")]
    count: Option<usize>,
    #[serde(default)]
    format: Format,
}

/// How keys and values are shown.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    /// UTF-8 (invalid sequences replaced).
    #[default]
    Text,
    /// Pretty-printed when the bytes are JSON, else as text.
    Json,
    /// Hex bytes.
    Hex,
}

/// A form's empty field is no value.
fn empty_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// `/topics/{name}/records`: a few records from an offset or a time.
pub(crate) async fn records(
    State(c): State<Console>,
    Path(name): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let title = format!("Records of {name}-{}", q.partition);
    respond(&title, records_page(&c, &name, &q).await)
}

async fn records_page(c: &Console, name: &str, q: &RecordsQuery) -> Page {
    let client = c.client().await?;
    let count = q.count.unwrap_or(20).clamp(1, MAX_RECORDS);
    let start = match (q.offset, q.timestamp) {
        (Some(o), _) => o,
        (None, Some(t)) => client.list_offset(name, q.partition, t).await?,
        (None, None) => client.list_offset(name, q.partition, -2).await?,
    };
    let end = client.list_offset(name, q.partition, -1).await?;
    let mut got: Vec<FetchedRecord> = Vec::new();
    let mut at = start.max(0);
    // A fetch answers whole batches from `at`: read until enough records or the end.
    while got.len() < count && at < end {
        let (batch, _) = client.fetch(name, q.partition, at, 1 << 20, 0).await?;
        let Some(last) = batch.last().map(|r| r.offset) else {
            break;
        };
        got.extend(batch.into_iter().filter(|r| r.offset >= at));
        at = last + 1;
    }
    got.truncate(count);
    let next = got.last().map_or(at, |r| r.offset + 1);
    let show = |b: &Option<bytes::Bytes>| match b {
        None => html! { span.muted { "null" } },
        Some(b) => html! { (render(b, q.format)) },
    };
    let link = |offset: i64, format: Format| {
        format!(
            "/topics/{}/records?partition={}&offset={offset}&count={count}&format={}",
            urlencode(name),
            q.partition,
            match format {
                Format::Text => "text",
                Format::Json => "json",
                Format::Hex => "hex",
            }
        )
    };
    Ok(html! {
        p {
            a href={ "/topics/" (urlencode(name)) } { "Back to " (name) }
            " · log end " (end)
            " · as "
            a href=(link(start, Format::Text)) { "text" } ", "
            a href=(link(start, Format::Json)) { "JSON" } ", "
            a href=(link(start, Format::Hex)) { "hex" }
        }
        @if got.is_empty() {
            p.muted { "No records from offset " (start) "." }
        } @else {
            table {
                tr { th { "Offset" } th { "Timestamp" } th { "Key" } th { "Value" } th { "Headers" } }
                @for r in &got {
                    tr {
                        td.num { (r.offset) }
                        td { (timestamp(r.timestamp)) }
                        td.data { (show(&r.key)) }
                        td.data { (show(&r.value)) }
                        td.data {
                            @for (k, v) in &r.headers {
                                (k) ": " (show(v)) br;
                            }
                        }
                    }
                }
            }
            @if next < end {
                p { a href=(link(next, q.format)) { "Next records from " (next) } }
            }
        }
    })
}

/// `/groups`: every consumer group.
pub(crate) async fn groups(State(c): State<Console>) -> Response {
    respond("Consumer groups", groups_page(&c).await)
}

async fn groups_page(c: &Console) -> Page {
    let client = c.client().await?;
    let groups = client.list_groups().await?;
    Ok(html! {
        @if groups.is_empty() { p.muted { "No groups." } }
        @else {
            table {
                tr { th { "Group" } th { "State" } th { "Protocol type" } }
                @for g in &groups {
                    tr {
                        td { a href={ "/groups/" (urlencode(&g.id)) } { (g.id) } }
                        td { (g.state) }
                        td { (g.protocol_type) }
                    }
                }
            }
        }
    })
}

/// `/groups/{id}`: members, and per partition the committed offset and the lag.
pub(crate) async fn group(State(c): State<Console>, Path(id): Path<String>) -> Response {
    let title = format!("Group {id}");
    respond(&title, group_page(&c, &id).await)
}

async fn group_page(c: &Console, id: &str) -> Page {
    let client = c.client().await?;
    let group = client.describe_group(id).await?;
    let committed = client.committed_offsets(id).await?;
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in committed.keys() {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (t, parts) in &by_topic {
        for (p, end) in client.list_offsets(t, parts, -1).await? {
            ends.insert(((*t).to_owned(), p), end);
        }
    }
    let owner = |t: &str, p: i32| {
        group
            .members
            .iter()
            .find(|m| m.assignment.get(t).is_some_and(|ps| ps.contains(&p)))
            .map(|m| m.client_id.clone())
    };
    Ok(html! {
        p { "State " strong { (group.state) } " · protocol " (group.protocol_type) " " (group.protocol) }
        h2 { "Members" }
        @if group.members.is_empty() { p.muted { "No members." } }
        @else {
            table {
                tr { th { "Member" } th { "Client" } th { "Host" } th { "Assigned" } }
                @for m in &group.members {
                    tr {
                        td.data { (m.id) }
                        td { (m.client_id) }
                        td { (m.host) }
                        td {
                            @for (t, ps) in &m.assignment { (t) ": " (join(ps)) br; }
                        }
                    }
                }
            }
        }
        h2 { "Offsets and lag" }
        table {
            tr { th { "Topic" } th { "Partition" } th { "Committed" } th { "Log end" } th { "Lag" } th { "Member" } }
            @for ((t, p), at) in &committed {
                @let end = ends.get(&(t.clone(), *p)).copied();
                tr {
                    td { a href={ "/topics/" (urlencode(t)) } { (t) } }
                    td.num { (p) }
                    td.num { (at) }
                    td.num { (end.map_or_else(|| "-".to_owned(), |e| e.to_string())) }
                    td.num { (end.map_or_else(|| "-".to_owned(), |e| (e - at).max(0).to_string())) }
                    td { (owner(t, *p).unwrap_or_default()) }
                }
            }
        }
    })
}

/// Bytes as the format asks, cut at [`SHOWN_BYTES`].
fn render(b: &[u8], format: Format) -> String {
    let (shown, cut) = match b.len() > SHOWN_BYTES {
        true => (&b[..SHOWN_BYTES], format!(" … ({} bytes)", b.len())),
        false => (b, String::new()),
    };
    match format {
        Format::Hex => {
            let lines: Vec<String> = shown
                .chunks(32)
                .map(|line| {
                    line.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            lines.join("\n") + &cut
        }
        // A JSON document is shown whole, pretty-printed; anything else as text.
        Format::Json => match serde_json::from_slice::<serde_json::Value>(b) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(shown).into_owned() + &cut,
        },
        Format::Text => String::from_utf8_lossy(shown).into_owned() + &cut,
    }
}

fn join(ids: &[i32]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}

/// A path segment with everything but unreserved characters percent-encoded.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_as_text_json_or_hex() {
        let json = br#"{"a":1,"b":[true]}"#;
        assert_eq!(render(json, Format::Text), r#"{"a":1,"b":[true]}"#);
        assert!(render(json, Format::Json).contains("\n  \"a\": 1"));
        assert_eq!(render(b"not json", Format::Json), "not json");
        assert_eq!(render(&[0, 255, 16], Format::Hex), "00 ff 10");
        let long = vec![b'x'; SHOWN_BYTES + 10];
        assert!(render(&long, Format::Text).ends_with(&format!(" … ({} bytes)", long.len())));
    }

    #[test]
    fn names_are_percent_encoded_in_links() {
        assert_eq!(urlencode("orders.v1_x-y"), "orders.v1_x-y");
        assert_eq!(urlencode("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn values_are_escaped_in_pages() {
        let page = layout(
            "t",
            html! { td.data { (render(b"<script>x</script>", Format::Text)) } },
        );
        let text = page.into_string();
        assert!(!text.contains("<script>"), "{text}");
        assert!(text.contains("&lt;script&gt;"), "{text}");
    }
}
