//! The server-side assignors of KIP-848 consumer groups (`group.consumer.assignors`): pure
//! functions from the members' subscriptions and the topics' partition counts to a target
//! assignment.
//!
//! - `uniform` (the default) spreads the partitions of all subscribed topics evenly over the
//!   members that subscribe to them and is sticky: a member keeps what its previous target
//!   gave it unless that unbalances the group, so a member joining or leaving moves only the
//!   partitions that must move.
//! - `range` gives each member a contiguous range of each topic it subscribes to, members in
//!   id order, so members subscribing to the same topics get the same partition numbers of
//!   each (co-partitioned joins).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// Partitions by topic id.
pub(crate) type TopicPartitions = BTreeMap<Uuid, BTreeSet<i32>>;

/// A target assignment: each member's partitions.
pub(crate) type Target = BTreeMap<String, TopicPartitions>;

/// The assignors this broker implements, by Kafka's names.
pub(crate) const ASSIGNORS: &[&str] = &["uniform", "range"];

/// What an assignor works from.
pub(crate) struct Input<'a> {
    /// Each member's subscribed topics (those that exist).
    pub(crate) subscriptions: &'a BTreeMap<String, BTreeSet<Uuid>>,
    /// Partition counts of the subscribed topics.
    pub(crate) partitions: &'a BTreeMap<Uuid, i32>,
    /// The previous target, which `uniform` keeps where it can.
    pub(crate) previous: &'a Target,
}

/// Runs the assignor named `name` (one of [`ASSIGNORS`]; anything else is `uniform`).
pub(crate) fn assign(name: &str, input: &Input<'_>) -> Target {
    match name {
        "range" => range(input),
        _ => uniform(input),
    }
}

/// Each member subscribing to a topic gets a contiguous share of it, in member id order; the
/// first `partitions % members` get one more.
fn range(input: &Input<'_>) -> Target {
    let mut target: Target = input
        .subscriptions
        .keys()
        .map(|m| (m.clone(), TopicPartitions::new()))
        .collect();
    for (&topic, &count) in input.partitions {
        let members: Vec<&String> = input
            .subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(&topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let n = members.len() as i32;
        let (share, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in members.into_iter().enumerate() {
            let len = share + i32::from((i as i32) < extra);
            if len > 0
                && let Some(t) = target.get_mut(m)
            {
                t.insert(topic, (next..next + len).collect());
            }
            next += len;
        }
    }
    target
}

/// Balanced and sticky: previous holdings are kept, the unassigned partitions go to the
/// eligible member holding fewest, then partitions move from a member to an eligible one
/// holding at least two fewer until none can (each move lowers the sum of squared counts, so
/// this ends; with one subscription for all it ends with counts at most one apart).
fn uniform(input: &Input<'_>) -> Target {
    let subs = input.subscriptions;
    let mut owner: BTreeMap<(Uuid, i32), &str> = BTreeMap::new();
    let mut count: BTreeMap<&str, usize> = subs.keys().map(|m| (m.as_str(), 0)).collect();
    // The members eligible for each topic.
    let mut eligible: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for (m, topics) in subs {
        for t in topics {
            if input.partitions.contains_key(t) {
                eligible.entry(*t).or_default().push(m.as_str());
            }
        }
    }
    for (m, held) in input.previous {
        let Some((m, topics)) = subs.get_key_value(m) else {
            continue;
        };
        for (t, ps) in held {
            let Some(&n) = input.partitions.get(t).filter(|_| topics.contains(t)) else {
                continue;
            };
            for &p in ps.iter().filter(|&&p| (0..n).contains(&p)) {
                if owner.insert((*t, p), m.as_str()).is_none() {
                    *count.entry(m.as_str()).or_default() += 1;
                }
            }
        }
    }
    let fewest = |count: &BTreeMap<&str, usize>, among: &[&'_ str]| -> Option<(usize, usize)> {
        among
            .iter()
            .enumerate()
            .map(|(i, m)| (count.get(m).copied().unwrap_or(0), i))
            .min()
    };
    for (t, members) in &eligible {
        for p in 0..input.partitions[t] {
            if owner.contains_key(&(*t, p)) {
                continue;
            }
            if let Some((_, i)) = fewest(&count, members) {
                owner.insert((*t, p), members[i]);
                *count.entry(members[i]).or_default() += 1;
            }
        }
    }
    loop {
        let mut moved = false;
        for (&(t, _), holder) in owner.iter_mut() {
            let Some((least, i)) = eligible.get(&t).and_then(|ms| fewest(&count, ms)) else {
                continue;
            };
            let held = count.get(holder).copied().unwrap_or(0);
            if held > least + 1 {
                let to = eligible[&t][i];
                *count.entry(holder).or_default() -= 1;
                *count.entry(to).or_default() += 1;
                *holder = to;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let mut target: Target = subs
        .keys()
        .map(|m| (m.clone(), TopicPartitions::new()))
        .collect();
    for ((t, p), m) in owner {
        if let Some(tps) = target.get_mut(m) {
            tps.entry(t).or_default().insert(p);
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn subs(members: &[(&str, &[u128])]) -> BTreeMap<String, BTreeSet<Uuid>> {
        members
            .iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| topic(*t)).collect()))
            .collect()
    }

    fn counts(target: &Target) -> Vec<usize> {
        target
            .values()
            .map(|tps| tps.values().map(BTreeSet::len).sum())
            .collect()
    }

    /// Every partition of every subscribed topic is assigned exactly once, to a member that
    /// subscribes to its topic.
    fn assert_complete(target: &Target, input: &Input<'_>) {
        let mut seen = BTreeSet::new();
        for (m, tps) in target {
            for (t, ps) in tps {
                assert!(
                    input.subscriptions[m].contains(t),
                    "{m} not subscribed to {t}"
                );
                for p in ps {
                    assert!(seen.insert((*t, *p)), "{t}-{p} assigned twice");
                }
            }
        }
        let subscribed: BTreeSet<Uuid> = input.subscriptions.values().flatten().copied().collect();
        let all: BTreeSet<(Uuid, i32)> = input
            .partitions
            .iter()
            .filter(|(t, _)| subscribed.contains(t))
            .flat_map(|(t, n)| (0..*n).map(|p| (*t, p)))
            .collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn uniform_spreads_evenly_and_moves_only_what_it_must() {
        let partitions = BTreeMap::from([(topic(1), 7), (topic(2), 5)]);
        let three = subs(&[("a", &[1, 2]), ("b", &[1, 2]), ("c", &[1, 2])]);
        let first = uniform(&Input {
            subscriptions: &three,
            partitions: &partitions,
            previous: &Target::new(),
        });
        assert_complete(
            &first,
            &Input {
                subscriptions: &three,
                partitions: &partitions,
                previous: &first,
            },
        );
        assert_eq!(counts(&first), vec![4, 4, 4]);
        // A fourth member joins: it gets three partitions, and nobody else gains any.
        let four = subs(&[
            ("a", &[1, 2]),
            ("b", &[1, 2]),
            ("c", &[1, 2]),
            ("d", &[1, 2]),
        ]);
        let input = Input {
            subscriptions: &four,
            partitions: &partitions,
            previous: &first,
        };
        let second = uniform(&input);
        assert_complete(&second, &input);
        assert_eq!(counts(&second), vec![3, 3, 3, 3]);
        for m in ["a", "b", "c"] {
            for (t, ps) in &second[m] {
                assert!(ps.is_subset(&first[m][t]), "{m} gained a partition");
            }
        }
        // One leaves: its partitions go to the others, the rest stay.
        let remaining = subs(&[("a", &[1, 2]), ("c", &[1, 2]), ("d", &[1, 2])]);
        let input = Input {
            subscriptions: &remaining,
            partitions: &partitions,
            previous: &second,
        };
        let third = uniform(&input);
        assert_complete(&third, &input);
        assert_eq!(counts(&third), vec![4, 4, 4]);
        for m in ["a", "c", "d"] {
            for (t, ps) in &second[m] {
                assert!(ps.is_subset(&third[m][t]), "{m} lost a partition");
            }
        }
    }

    #[test]
    fn uniform_honours_differing_subscriptions() {
        let partitions = BTreeMap::from([(topic(1), 6), (topic(2), 2)]);
        let s = subs(&[("a", &[1]), ("b", &[1, 2]), ("c", &[2])]);
        let input = Input {
            subscriptions: &s,
            partitions: &partitions,
            previous: &Target::new(),
        };
        let target = uniform(&input);
        assert_complete(&target, &input);
        let c = counts(&target);
        assert!(
            c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn uniform_drops_what_no_longer_exists() {
        let s = subs(&[("a", &[1]), ("b", &[1])]);
        let previous = Target::from([
            (
                "a".to_string(),
                TopicPartitions::from([(topic(1), BTreeSet::from([0, 1, 5]))]),
            ),
            (
                "gone".to_string(),
                TopicPartitions::from([(topic(1), BTreeSet::from([2]))]),
            ),
            (
                "b".to_string(),
                TopicPartitions::from([(topic(9), BTreeSet::from([0]))]),
            ),
        ]);
        let partitions = BTreeMap::from([(topic(1), 4)]);
        let input = Input {
            subscriptions: &s,
            partitions: &partitions,
            previous: &previous,
        };
        let target = uniform(&input);
        assert_complete(&target, &input);
        assert_eq!(target["a"][&topic(1)], BTreeSet::from([0, 1]));
    }

    #[test]
    fn range_gives_contiguous_shares_in_member_order() {
        let partitions = BTreeMap::from([(topic(1), 5), (topic(2), 5)]);
        let s = subs(&[("b", &[1, 2]), ("a", &[1, 2])]);
        let input = Input {
            subscriptions: &s,
            partitions: &partitions,
            previous: &Target::new(),
        };
        let target = assign("range", &input);
        assert_complete(&target, &input);
        for t in [topic(1), topic(2)] {
            assert_eq!(target["a"][&t], BTreeSet::from([0, 1, 2]));
            assert_eq!(target["b"][&t], BTreeSet::from([3, 4]));
        }
        // A topic only one member subscribes to goes to it whole.
        let s = subs(&[("a", &[1]), ("b", &[2])]);
        let input = Input {
            subscriptions: &s,
            partitions: &partitions,
            previous: &Target::new(),
        };
        let target = assign("range", &input);
        assert_complete(&target, &input);
        assert_eq!(target["b"][&topic(2)].len(), 5);
    }
}
