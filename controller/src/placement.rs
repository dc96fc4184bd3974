//! Replica placement: which brokers hold a new partition, and which of them leads.
//!
//! Pure functions of the metadata, so every controller applying the same command computes the
//! same assignment. Brokers are ordered so that consecutive positions alternate racks (Kafka's
//! rack-alternated list); a partition's leader is the broker that leads fewest of the topic's
//! partitions so far (so every topic spreads over the brokers, as in Kafka), then fewest
//! partitions of all topics (so the cluster balances too), then by rotating with the partition
//! number; its followers are the brokers after it in that order, shifted per round as Kafka
//! does so followers spread too.

use std::collections::BTreeMap;

use crate::command::CommandError;
use crate::model::{BrokerId, MetadataImage};

/// A broker that may receive replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Broker id.
    pub id: BrokerId,
    /// Rack, if set.
    pub rack: Option<String>,
}

/// Orders brokers so neighbours are in different racks where possible: racks sorted by name,
/// brokers by id within a rack, then one broker from each rack in turn. Brokers without a rack
/// form their own group.
pub fn rack_alternated(candidates: &[Candidate]) -> Vec<BrokerId> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<BrokerId>> = BTreeMap::new();
    for c in candidates {
        by_rack.entry(c.rack.as_deref()).or_default().push(c.id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let rounds = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(candidates.len());
    for round in 0..rounds {
        for ids in by_rack.values() {
            if let Some(id) = ids.get(round) {
                out.push(*id);
            }
        }
    }
    out
}

/// Assigns replicas to partitions `first..first + count` of a topic.
///
/// `topic_load` counts the partitions of this topic each broker leads already (for
/// CreatePartitions), `leader_load` those of every topic; both are updated with the new
/// leaders so one command's partitions balance against each other too.
pub fn assign(
    candidates: &[Candidate],
    first: i32,
    count: i32,
    replication_factor: i16,
    topic_load: &mut BTreeMap<BrokerId, usize>,
    leader_load: &mut BTreeMap<BrokerId, usize>,
) -> Result<Vec<Vec<BrokerId>>, CommandError> {
    let rf = usize::try_from(replication_factor)
        .ok()
        .filter(|rf| *rf >= 1)
        .ok_or(CommandError::InvalidReplicationFactor { replication_factor })?;
    let ring = rack_alternated(candidates);
    let rack_of = |id: BrokerId| {
        candidates
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.rack.as_deref())
    };
    let n = ring.len();
    if rf > n {
        return Err(CommandError::InsufficientBrokers {
            required: rf,
            available: n,
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for p in first..first.saturating_add(count) {
        let p = usize::try_from(p).unwrap_or(0);
        let start = p % n;
        let pos = (0..n)
            .min_by_key(|i| {
                let of = |m: &BTreeMap<BrokerId, usize>| m.get(&ring[*i]).copied().unwrap_or(0);
                (of(topic_load), of(leader_load), (i + n - start) % n)
            })
            .unwrap_or(0);
        let mut replicas = Vec::with_capacity(rf);
        replicas.push(ring[pos]);
        if n > 1 {
            let shift = (p / n) % (n - 1);
            let order: Vec<BrokerId> = (0..n - 1)
                .map(|j| ring[(pos + 1 + (shift + j) % (n - 1)) % n])
                .collect();
            // Followers in that order, first from racks that hold no replica yet (Kafka's
            // rack-aware rule: the shift alone can land two replicas in one rack), then the
            // rest. Without racks this is the order itself.
            let mut racks_used = vec![rack_of(ring[pos])];
            for id in &order {
                if replicas.len() < rf && !racks_used.contains(&rack_of(*id)) {
                    racks_used.push(rack_of(*id));
                    replicas.push(*id);
                }
            }
            for id in &order {
                if replicas.len() < rf && !replicas.contains(id) {
                    replicas.push(*id);
                }
            }
        }
        *leader_load.entry(ring[pos]).or_default() += 1;
        *topic_load.entry(ring[pos]).or_default() += 1;
        out.push(replicas);
    }
    Ok(out)
}

/// The partitions a periodic leader rebalance moves back to their preferred replica (the
/// first in the replica list, where placement put the leader), as Kafka's
/// `auto.leader.rebalance.enable` does: for each broker whose share of preferred partitions
/// led by someone else is above `percentage`, those of them whose preferred replica is live
/// and in sync.
pub fn preferred_elections(image: &MetadataImage, percentage: u32) -> Vec<(String, i32)> {
    let live = |b: &BrokerId| image.brokers.get(b).is_some_and(|r| !r.fenced);
    // Per preferred broker: partitions it should lead, and those it does not.
    let mut preferred: BTreeMap<BrokerId, (usize, Vec<(String, i32)>)> = BTreeMap::new();
    for t in image.topics.values() {
        for (i, p) in t.partitions.iter().enumerate() {
            let Some(first) = p.replicas.first() else {
                continue;
            };
            let entry = preferred.entry(*first).or_default();
            entry.0 += 1;
            if p.leader != Some(*first) && live(first) && p.isr.contains(first) {
                entry.1.push((t.name.clone(), i as i32));
            }
        }
    }
    preferred
        .into_values()
        .filter(|(total, movable)| movable.len() * 100 > *total * percentage as usize)
        .flat_map(|(_, movable)| movable)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn brokers(spec: &[(BrokerId, Option<&str>)]) -> Vec<Candidate> {
        spec.iter()
            .map(|(id, rack)| Candidate {
                id: *id,
                rack: rack.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_balanced() {
        let c = brokers(&[(1, None), (2, None), (3, None), (4, None)]);
        let mut load = BTreeMap::new();
        let a = assign(&c, 0, 12, 3, &mut BTreeMap::new(), &mut load).expect("assign");
        for r in &a {
            assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), 3, "{r:?}");
        }
        assert!(load.values().all(|l| *l == 3), "{load:?}");
        let mut replica_load: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for id in a.iter().flatten() {
            *replica_load.entry(*id).or_default() += 1;
        }
        assert!(replica_load.values().all(|l| *l == 9), "{replica_load:?}");
    }

    #[test]
    fn racks_alternate_so_replicas_span_racks() {
        let c = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
            (5, Some("c")),
            (6, Some("c")),
        ]);
        assert_eq!(rack_alternated(&c), vec![1, 3, 5, 2, 4, 6]);
        let rack = |id: BrokerId| c.iter().find(|b| b.id == id).and_then(|b| b.rack.clone());
        // Many partitions, so the follower shift comes into play (it once put two replicas
        // of a partition in one rack from the seventh partition on).
        let a = assign(&c, 0, 60, 3, &mut BTreeMap::new(), &mut BTreeMap::new()).expect("assign");
        for r in &a {
            let racks: BTreeSet<_> = r.iter().map(|id| rack(*id)).collect();
            assert_eq!(racks.len(), 3, "{r:?} spans fewer than 3 racks");
        }
        // Two racks, two copies: always one in each.
        let two = brokers(&[
            (1, Some("a")),
            (2, Some("b")),
            (3, Some("a")),
            (4, Some("b")),
        ]);
        let rack = |id: BrokerId| two.iter().find(|b| b.id == id).and_then(|b| b.rack.clone());
        let a = assign(&two, 0, 40, 2, &mut BTreeMap::new(), &mut BTreeMap::new()).expect("assign");
        for r in &a {
            assert_ne!(rack(r[0]), rack(r[1]), "{r:?} in one rack");
        }
        // More copies than racks: every rack, and distinct brokers.
        let a = assign(&two, 0, 40, 3, &mut BTreeMap::new(), &mut BTreeMap::new()).expect("assign");
        for r in &a {
            let racks: BTreeSet<_> = r.iter().map(|id| rack(*id)).collect();
            let ids: BTreeSet<_> = r.iter().collect();
            assert_eq!((racks.len(), ids.len()), (2, 3), "{r:?}");
        }
    }

    #[test]
    fn same_input_same_assignment_and_load_is_respected() {
        let c = brokers(&[(1, None), (2, None), (3, None)]);
        let mut load = BTreeMap::from([(1, 5), (2, 5)]);
        let a = assign(&c, 0, 2, 1, &mut BTreeMap::new(), &mut load.clone()).expect("assign");
        let b = assign(&c, 0, 2, 1, &mut BTreeMap::new(), &mut load).expect("assign");
        assert_eq!(a, b);
        // The least loaded broker first, then the topic spreads before piling onto it.
        assert_eq!(a[0], vec![3]);
        assert_ne!(a[1], vec![3]);
    }

    #[test]
    fn a_topic_spreads_over_every_broker_whatever_the_others_lead() {
        // Broker 3 joined late and leads nothing; a new topic still goes to all three.
        let c = brokers(&[(1, None), (2, None), (3, None)]);
        let mut load = BTreeMap::from([(1, 8), (2, 8)]);
        let a = assign(&c, 0, 6, 1, &mut BTreeMap::new(), &mut load).expect("assign");
        let mut per_broker: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for r in &a {
            *per_broker.entry(r[0]).or_default() += 1;
        }
        assert_eq!(per_broker, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        // Growing it keeps the spread, counting what it has.
        let mut topic = per_broker.clone();
        let more = assign(&c, 6, 3, 1, &mut topic, &mut load).expect("assign");
        let leaders: BTreeSet<BrokerId> = more.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn too_few_brokers_or_bad_factor_are_refused() {
        let c = brokers(&[(1, None), (2, None)]);
        assert_eq!(
            assign(&c, 0, 1, 3, &mut BTreeMap::new(), &mut BTreeMap::new()),
            Err(CommandError::InsufficientBrokers {
                required: 3,
                available: 2
            })
        );
        assert_eq!(
            assign(&c, 0, 1, 0, &mut BTreeMap::new(), &mut BTreeMap::new()),
            Err(CommandError::InvalidReplicationFactor {
                replication_factor: 0
            })
        );
    }

    #[test]
    fn a_rebalance_moves_leaders_home_only_past_the_threshold_and_only_to_live_in_sync_replicas() {
        use crate::model::{BrokerRecord, PartitionRecord, TopicRecord};
        let broker = |id, fenced| BrokerRecord {
            id,
            endpoints: Vec::new(),
            rack: None,
            epoch: 1,
            incarnation: uuid::Uuid::nil(),
            fenced,
        };
        // (replicas, isr, leader)
        let partition = |replicas: &[BrokerId], isr: &[BrokerId], leader| PartitionRecord {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader: Some(leader),
            leader_epoch: 1,
            partition_epoch: 1,
            adding: Vec::new(),
            removing: Vec::new(),
            unclean: false,
        };
        let image = |partitions: Vec<PartitionRecord>, fenced3: bool| MetadataImage {
            brokers: [broker(1, false), broker(2, false), broker(3, fenced3)]
                .into_iter()
                .map(|b| (b.id, b))
                .collect(),
            topics: BTreeMap::from([(
                "t".to_owned(),
                TopicRecord {
                    name: "t".into(),
                    id: uuid::Uuid::nil(),
                    replication_factor: 3,
                    configs: BTreeMap::new(),
                    partitions,
                },
            )]),
            ..MetadataImage::default()
        };
        let home = |leader| partition(&[1, 2, 3], &[1, 2, 3], leader);
        // Broker 1 prefers ten partitions and leads nine: 10% is not above 10%.
        let mut ps: Vec<PartitionRecord> = (0..9).map(|_| home(1)).collect();
        ps.push(home(2));
        assert!(preferred_elections(&image(ps.clone(), false), 10).is_empty());
        // Two of ten led elsewhere is: both go home.
        ps[0] = home(3);
        assert_eq!(
            preferred_elections(&image(ps.clone(), false), 10),
            vec![("t".to_owned(), 0), ("t".to_owned(), 9)]
        );
        // A preferred replica out of the ISR, or fenced, stays where it is.
        ps[0] = partition(&[1, 2, 3], &[2, 3], 2);
        ps.push(partition(&[3, 1, 2], &[3, 1, 2], 1));
        let movable = preferred_elections(&image(ps, true), 0);
        assert_eq!(movable, vec![("t".to_owned(), 9)]);
    }
}
