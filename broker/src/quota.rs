//! Client quotas, as Kafka's ClientQuotaManager enforces them.
//!
//! Quotas live in the cluster metadata (AlterClientQuotas), per entity: a user, a client id,
//! a user with a client id (each name possibly the type's default), or an IP address. A
//! request's user (its principal's name, `ANONYMOUS` when unauthenticated) and client id
//! pick, per quota kind, the most specific entity that sets that kind, in Kafka's order:
//!
//! 1. user and client id, 2. user and the default client id, 3. user,
//! 4. the default user and client id, 5. the default user and default client id,
//! 6. the default user, 7. client id, 8. the default client id.
//!
//! The levels that name a user (or the default user) measure each user separately, and the
//! levels with a client id each client id: `/config/users/<default>` gives every user its own
//! rate, while all connections of one user share it. A request's usage is taken from the
//! client's allowance, which fills at the quota's rate up to one second's worth; once it is
//! below zero the client is throttled for the time it takes to fill back to zero. The
//! response carries that time in `throttle_time_ms` (clients wait it out, KIP-219), and the
//! connection takes no further request until it has passed (clients that do not wait are
//! held back all the same), as Kafka mutes a throttled channel.
//!
//! Kafka measures usage as a rate over eleven one-second samples instead, which lets a client
//! send ten seconds' worth at once, and again each time that burst ages out of the window: a
//! producer held to 1 MiB/s sends 10 MiB bursts every ~14 s, so that over 30 s it is 0.9 to
//! 1.3 times its quota depending on where the bursts fall. The allowance here holds it to
//! its rate over any few seconds, with the same throttle-time protocol.
//!
//! Kinds: `producer_byte_rate` (Produce request bytes), `consumer_byte_rate` (Fetch response
//! bytes; a throttled Fetch is answered empty and not counted, and one Fetch never asks for
//! more than the quota's window holds), `request_percentage` (time spent handling the
//! client's requests, in percent of one thread), and per IP `connection_creation_rate` (a
//! connection over it is closed once the throttle time has passed, as in KIP-612). Replicas'
//! fetches and the brokers' own requests are not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_controller::model::{MetadataImage, QuotaEntity};

/// Entity types.
pub(crate) const USER: &str = "user";
pub(crate) const CLIENT_ID: &str = "client-id";
pub(crate) const IP: &str = "ip";

/// Quota names.
pub(crate) const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub(crate) const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
pub(crate) const REQUEST_PERCENTAGE: &str = "request_percentage";
pub(crate) const CONNECTION_CREATION_RATE: &str = "connection_creation_rate";
/// Kafka's quota on topic and partition creations and deletions (KIP-599), not enforced here:
/// AlterClientQuotas refuses it rather than keep a bound nobody applies.
pub(crate) const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";

/// How much a client may use at once: one second at its quota. Kafka measures rates over
/// eleven one-second samples, which lets a client send ten seconds' worth at once, and again
/// each time a burst ages out of the window; a bucket this small holds it to its rate over
/// any few seconds instead (see the module documentation).
const BURST: Duration = Duration::from_secs(1);

/// Sensors unused for this long are dropped (Kafka expires quota sensors after an hour).
const IDLE: Duration = Duration::from_secs(3600);

/// What a client-level quota measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Produce,
    Fetch,
    Request,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Produce => PRODUCER_BYTE_RATE,
            Kind::Fetch => CONSUMER_BYTE_RATE,
            Kind::Request => REQUEST_PERCENTAGE,
        }
    }
}

/// A client's allowance (a token bucket): it fills at the quota's rate up to [`BURST`]'s
/// worth; what a client uses is taken from it, and may take it below zero, which the client
/// then waits out.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The most it holds: [`BURST`] at `bound`, and at least one (so a connection rate
    /// below one a second still lets one through).
    fn capacity(bound: f64) -> f64 {
        (bound * BURST.as_secs_f64()).max(1.0)
    }

    fn new(bound: f64, now: Instant) -> Self {
        Self {
            tokens: Self::capacity(bound),
            at: now,
        }
    }

    /// Brings the allowance up to `now` at `bound` per second.
    fn refill(&mut self, bound: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + bound * elapsed).min(Self::capacity(bound));
        self.at = self.at.max(now);
    }

    /// Takes `value` (a negative one gives back what was taken).
    fn record(&mut self, value: f64, bound: f64, now: Instant) {
        self.refill(bound, now);
        self.tokens -= value;
    }

    /// How long until the allowance is back to zero; zero when it is not below.
    fn throttle(&mut self, bound: f64, now: Instant) -> Duration {
        self.refill(bound, now);
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(-self.tokens / bound).unwrap_or(Duration::MAX)
    }
}

/// Whose usage a sensor measures: `(user, client id)`, either empty when the quota's level
/// does not name it.
type Tags = (String, String);

/// Rates by whose they are, each with when it was last used; those idle for [`IDLE`] are
/// dropped (looked for once a minute).
#[derive(Debug)]
struct Sensors<K> {
    rates: HashMap<K, (Bucket, Instant)>,
    swept: Option<Instant>,
}

impl<K> Default for Sensors<K> {
    fn default() -> Self {
        Self {
            rates: HashMap::new(),
            swept: None,
        }
    }
}

impl<K: std::hash::Hash + Eq> Sensors<K> {
    fn get(&mut self, key: K, bound: f64, now: Instant) -> &mut Bucket {
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(60))
        {
            self.rates
                .retain(|_, (_, used)| now.saturating_duration_since(*used) < IDLE);
            self.swept = Some(now);
        }
        let (rate, used) = self
            .rates
            .entry(key)
            .or_insert_with(|| (Bucket::new(bound, now), now));
        *used = now;
        rate
    }
}

/// Usage of every client that has a quota, and of every IP with a connection quota.
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    clients: Mutex<Sensors<(Kind, Tags)>>,
    ips: Mutex<Sensors<IpAddr>>,
}

/// The user a principal (`User:alice`) is for quotas: its name.
pub(crate) fn user_of(principal: &str) -> &str {
    principal
        .split_once(':')
        .map_or(principal, |(_, name)| name)
}

fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> QuotaEntity {
    let mut map = std::collections::BTreeMap::new();
    if let Some(u) = user {
        map.insert(USER.to_owned(), u.map(str::to_owned));
    }
    if let Some(c) = client {
        map.insert(CLIENT_ID.to_owned(), c.map(str::to_owned));
    }
    QuotaEntity(map)
}

/// The bound of `kind` for `user` with `client`, and whose usage it is measured on.
pub(crate) fn resolve(
    image: &MetadataImage,
    kind: Kind,
    user: &str,
    client: &str,
) -> Option<(f64, Tags)> {
    if image.quotas.is_empty() {
        return None;
    }
    let (u, c) = (user.to_owned(), client.to_owned());
    let levels: [(QuotaEntity, Tags); 8] = [
        (
            entity(Some(Some(user)), Some(Some(client))),
            (u.clone(), c.clone()),
        ),
        (entity(Some(Some(user)), Some(None)), (u.clone(), c.clone())),
        (entity(Some(Some(user)), None), (u.clone(), String::new())),
        (
            entity(Some(None), Some(Some(client))),
            (u.clone(), c.clone()),
        ),
        (entity(Some(None), Some(None)), (u.clone(), c.clone())),
        (entity(Some(None), None), (u, String::new())),
        (entity(None, Some(Some(client))), (String::new(), c.clone())),
        (entity(None, Some(None)), (String::new(), c)),
    ];
    levels.into_iter().find_map(|(e, tags)| {
        let bound = image.quotas_of(&e)?.get(kind.name())?;
        Some((bound.0, tags))
    })
}

impl Quotas {
    /// Records `value` of `kind` for `user` with `client` at `now`; how long the client is
    /// throttled for (zero: not at all, or it has no quota).
    pub(crate) fn record(
        &self,
        image: &MetadataImage,
        kind: Kind,
        (user, client): (&str, &str),
        value: f64,
        now: Instant,
    ) -> Duration {
        let Some((bound, tags)) = resolve(image, kind, user, client) else {
            return Duration::ZERO;
        };
        let mut sensors = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = sensors.get((kind, tags), bound, now);
        bucket.record(value, bound, now);
        bucket.throttle(bound, now)
    }

    /// How long the client is throttled for by `kind` as things stand, recording nothing.
    pub(crate) fn throttled(
        &self,
        image: &MetadataImage,
        kind: Kind,
        (user, client): (&str, &str),
        now: Instant,
    ) -> Duration {
        let Some((bound, tags)) = resolve(image, kind, user, client) else {
            return Duration::ZERO;
        };
        let mut sensors = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        sensors
            .rates
            .get_mut(&(kind, tags))
            .map_or(Duration::ZERO, |(bucket, _)| bucket.throttle(bound, now))
    }

    /// The most of `kind` one request may use without being throttled for certain: a full
    /// allowance (as Kafka's `getMaxValueInQuotaWindow` bounds a Fetch by its window);
    /// `None` without a quota.
    pub(crate) fn max_in_window(
        image: &MetadataImage,
        kind: Kind,
        (user, client): (&str, &str),
    ) -> Option<f64> {
        resolve(image, kind, user, client).map(|(bound, _)| Bucket::capacity(bound))
    }

    /// Counts a new connection from `ip`; how long to hold it before closing it when it is
    /// over the IP's `connection_creation_rate` (`None`: serve it).
    pub(crate) fn connection(
        &self,
        image: &MetadataImage,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        if image.quotas.is_empty() {
            return None;
        }
        let named = |name: Option<String>| {
            QuotaEntity(std::collections::BTreeMap::from([(IP.to_owned(), name)]))
        };
        let bound = [named(Some(ip.to_string())), named(None)]
            .iter()
            .find_map(|e| image.quotas_of(e)?.get(CONNECTION_CREATION_RATE).copied())?;
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = ips.get(ip, bound.0, now);
        bucket.record(1.0, bound.0, now);
        let throttle = bucket.throttle(bound.0, now);
        if throttle.is_zero() {
            return None;
        }
        // A refused connection does not count against the next ones (Kafka records only
        // accepted connections).
        bucket.record(-1.0, bound.0, now);
        Some(throttle)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strata_controller::model::QuotaValue;

    use super::*;

    fn image(quotas: &[(QuotaEntity, &str, f64)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (e, name, v) in quotas {
            let mut values = image.quotas_of(e).cloned().unwrap_or_default();
            values.insert((*name).to_owned(), QuotaValue(*v));
            image.set_quotas(e, values);
        }
        image
    }

    /// Kafka's precedence, level by level: each image sets one more specific level than the
    /// previous, and the most specific one wins, measured on the tags its level names.
    #[test]
    fn the_most_specific_quota_applies() {
        let levels = [
            (entity(None, Some(None)), ("", "app")),
            (entity(None, Some(Some("app"))), ("", "app")),
            (entity(Some(None), None), ("alice", "")),
            (entity(Some(None), Some(None)), ("alice", "app")),
            (entity(Some(None), Some(Some("app"))), ("alice", "app")),
            (entity(Some(Some("alice")), None), ("alice", "")),
            (entity(Some(Some("alice")), Some(None)), ("alice", "app")),
            (
                entity(Some(Some("alice")), Some(Some("app"))),
                ("alice", "app"),
            ),
        ];
        let mut set = Vec::new();
        for (i, (e, (u, c))) in levels.iter().enumerate() {
            set.push((e.clone(), PRODUCER_BYTE_RATE, (i + 1) as f64));
            let image = image(&set);
            assert_eq!(
                resolve(&image, Kind::Produce, "alice", "app"),
                Some(((i + 1) as f64, (u.to_string(), c.to_string()))),
                "level {}",
                8 - i
            );
            assert_eq!(resolve(&image, Kind::Fetch, "alice", "app"), None);
        }
        // Another user with another client id falls back to the defaults.
        let image = image(&set);
        assert_eq!(
            resolve(&image, Kind::Produce, "bob", "tool"),
            Some((4.0, ("bob".into(), "tool".into())))
        );
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_until_its_allowance_is_back() {
        let quotas = Quotas::default();
        let image = image(&[(entity(Some(None), None), PRODUCER_BYTE_RATE, 1000.0)]);
        let start = Instant::now();
        let alice = ("alice", "app");
        // A second's worth at once is within it.
        assert_eq!(
            quotas.record(&image, Kind::Produce, alice, 1000.0, start),
            Duration::ZERO
        );
        // 5,000 more: five seconds to make up.
        let throttle = quotas.record(&image, Kind::Produce, alice, 5_000.0, start);
        assert_eq!(throttle, Duration::from_secs(5));
        assert_eq!(
            quotas.throttled(&image, Kind::Produce, alice, start),
            throttle
        );
        let later = start + Duration::from_secs(2);
        assert_eq!(
            quotas.throttled(&image, Kind::Produce, alice, later),
            Duration::from_secs(3)
        );
        // Another user has an allowance of its own.
        assert_eq!(
            quotas.record(&image, Kind::Produce, ("bob", "app"), 1000.0, start),
            Duration::ZERO
        );
        // Once made up, the client goes on; an idle client saves up one second at most.
        let idle = start + Duration::from_secs(60);
        assert_eq!(
            quotas.throttled(&image, Kind::Produce, alice, idle),
            Duration::ZERO
        );
        assert_eq!(
            quotas.record(&image, Kind::Produce, alice, 1500.0, idle),
            Duration::from_millis(500)
        );
        assert_eq!(
            Quotas::max_in_window(&image, Kind::Produce, alice),
            Some(1000.0)
        );
    }

    #[test]
    fn a_steady_client_is_held_to_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1000.0, start);
        // A client sending 100 every time it is let through, for 30 s: 1000 per second,
        // give or take the one second it may save up.
        let mut at = start;
        let mut sent = 0.0;
        while at < start + Duration::from_secs(30) {
            bucket.record(100.0, 1000.0, at);
            sent += 100.0;
            at += bucket.throttle(1000.0, at).max(Duration::from_millis(1));
        }
        assert!((30_000.0..=31_100.0).contains(&sent), "{sent}");
    }

    #[test]
    fn connections_over_an_ips_rate_are_held_then_closed() {
        let quotas = Quotas::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let image = image(&[(
            QuotaEntity(BTreeMap::from([(IP.to_owned(), Some(ip.to_string()))])),
            CONNECTION_CREATION_RATE,
            1.0,
        )]);
        let now = Instant::now();
        // One a second: the first is served, the next waits out a second.
        assert_eq!(quotas.connection(&image, ip, now), None);
        assert_eq!(
            quotas.connection(&image, ip, now),
            Some(Duration::from_secs(1))
        );
        // Refused ones do not count: still refused, not more so.
        assert_eq!(
            quotas.connection(&image, ip, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            quotas.connection(&image, ip, now + Duration::from_secs(1)),
            None
        );
        // Another IP has no quota.
        assert_eq!(quotas.connection(&image, [10, 0, 0, 2].into(), now), None);
    }
}
