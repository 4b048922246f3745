//! Topology discovery on Aurora, as pure decisions: which host an instance
//! identifier names ([`HostPattern`]), and which instances to add to or
//! remove from the discovered slots given what `aurora_replica_status()`
//! lists now ([`plan`]).
//!
//! Nothing here does I/O or reads a clock: the caller passes `now`, the
//! instances seen and the slots, and applies the [`Change`]s.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::clock;
use crate::config::error::ConfigError;

/// The longest DNS label, and so the longest instance identifier used.
const MAX_LABEL: usize = 63;

/// A host name with one `?` that an instance identifier replaces, as the
/// AWS JDBC wrapper's `clusterInstanceHostPattern`; or, as libpq allows
/// for a host, an absolute Unix-socket directory (`/run/pg/?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPattern {
    before: String,
    after: String,
}

impl HostPattern {
    /// Parses `pattern`; the error names `field`.
    pub(crate) fn parse(field: &str, pattern: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::InvalidValue {
            field: field.to_owned(),
            value: format!("{pattern:?}"),
            reason,
        };
        let mut parts = pattern.split('?');
        let (Some(before), Some(after), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid(
                "must contain exactly one `?` (the instance identifier)",
            ));
        };
        let socket_dir = pattern.starts_with('/');
        let is_host_char =
            |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || (socket_dir && c == '/');
        if !before.chars().chain(after.chars()).all(is_host_char) {
            return Err(invalid(
                "must be a host name (letters, digits, `-`, `.`) or an absolute \
                 socket directory, with one `?` (no scheme, port or spaces)",
            ));
        }
        // `?` must be a whole label, or part of one, never glue two dots.
        let dotted = !socket_dir && (before.starts_with('.') || after.ends_with('.'));
        if dotted || pattern.contains("..") {
            return Err(invalid("must not start or end with `.` nor contain `..`"));
        }
        Ok(Self {
            before: before.to_owned(),
            after: after.to_owned(),
        })
    }

    /// The host of `instance`, or `None` when the identifier is not a DNS
    /// label (1 to 63 letters, digits or `-`, not at either end): a row
    /// naming such an instance is not followed.
    pub(crate) fn expand(&self, instance: &str) -> Option<String> {
        is_label(instance).then(|| format!("{}{instance}{}", self.before, self.after))
    }
}

fn is_label(text: &str) -> bool {
    (1..=MAX_LABEL).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A discovered instance in its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// Its instance identifier.
    pub(crate) instance: String,
    /// When the writer's `aurora_replica_status()` last listed it fresh.
    pub(crate) last_seen: Instant,
}

/// What to do to the discovered slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Build a node for `instance` in the free slot `slot`.
    Add { slot: usize, instance: String },
    /// Take slot `slot` out of routing and close its pool.
    Remove { slot: usize, why: Removal },
    /// `instance` is new but every slot is taken.
    NoRoom { instance: String },
}

/// Why a discovered node is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Not listed fresh for the removal grace.
    Vanished,
    /// A configured node now reports this instance (e.g. the cluster
    /// endpoint moved to it in a failover): one node per instance.
    Configured,
}

/// The changes that bring `slots` in line with `seen` (the instances the
/// write target's `aurora_replica_status()` lists with a fresh row) and
/// `configured` (the instance identifiers the configured nodes reported).
///
/// - an instance seen, neither configured nor in a slot, fills the lowest
///   free slot (in `seen`'s order; `NoRoom` when none is left);
/// - a slot whose instance a configured node reports is freed at once;
/// - a slot whose instance was last seen `grace` or longer before `now` is
///   freed.
///
/// The caller records sightings first ([`touch`]); a freed slot is free
/// for later plans, not this one.
pub(crate) fn plan(
    seen: &[String],
    configured: &[String],
    slots: &[Option<Discovered>],
    now: Instant,
    grace: Duration,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (slot, entry) in slots.iter().enumerate() {
        let Some(entry) = entry else { continue };
        if configured.contains(&entry.instance) {
            let why = Removal::Configured;
            changes.push(Change::Remove { slot, why });
        } else if now >= clock::after(entry.last_seen, grace) {
            let why = Removal::Vanished;
            changes.push(Change::Remove { slot, why });
        }
    }
    let mut free = slots
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.is_none())
        .map(|(slot, _)| slot);
    let held = |instance: &String| {
        configured.contains(instance)
            || slots
                .iter()
                .flatten()
                .any(|entry| entry.instance == *instance)
    };
    for (position, instance) in seen.iter().enumerate() {
        if held(instance) || seen[..position].contains(instance) {
            continue;
        }
        changes.push(match free.next() {
            Some(slot) => Change::Add {
                slot,
                instance: instance.clone(),
            },
            None => Change::NoRoom {
                instance: instance.clone(),
            },
        });
    }
    changes
}

/// Records that the slots' instances listed in `seen` were seen at `now`.
pub(crate) fn touch(slots: &mut [Option<Discovered>], seen: &[String], now: Instant) {
    for entry in slots.iter_mut().flatten() {
        if seen.contains(&entry.instance) {
            entry.last_seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Result<HostPattern, ConfigError> {
        HostPattern::parse("discovery.instance_host_pattern", text)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    fn slot(instance: &str, last_seen: Instant) -> Option<Discovered> {
        Some(Discovered {
            instance: instance.to_owned(),
            last_seen,
        })
    }

    #[test]
    fn a_pattern_expands_a_label_into_its_host() {
        let p = pattern("?.abc123.us-east-1.rds.amazonaws.com").unwrap();
        assert_eq!(
            p.expand("reader-2").as_deref(),
            Some("reader-2.abc123.us-east-1.rds.amazonaws.com")
        );
        let p = pattern("db-?.internal").unwrap();
        assert_eq!(p.expand("r1").as_deref(), Some("db-r1.internal"));
        assert_eq!(pattern("?").unwrap().expand("x").as_deref(), Some("x"));
        let p = pattern("/run/pg/?").unwrap();
        assert_eq!(p.expand("r1").as_deref(), Some("/run/pg/r1"));
        // Identifiers that are no DNS label are not followed.
        for bad in ["", "-a", "a-", "a.b", "a b", "a;drop", &"x".repeat(64)] {
            assert_eq!(p.expand(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_pattern_must_hold_exactly_one_question_mark_in_a_host_name() {
        for bad in [
            "abc.rds.amazonaws.com",
            "?.?.rds.amazonaws.com",
            "",
            "postgres://?.abc",
            "?.abc:5432",
            "?.abc/db",
            " ?.abc",
            ".?.abc",
            "?.abc.",
            "?..abc",
            "/run/../?",
            "/run/pg/? x",
        ] {
            let error = pattern(bad).expect_err(bad);
            let ConfigError::InvalidValue { field, .. } = &error else {
                panic!("{error:?}")
            };
            assert_eq!(field, "discovery.instance_host_pattern");
        }
    }

    #[test]
    fn new_instances_fill_the_lowest_free_slots() {
        let now = Instant::now();
        let slots = [None, slot("r1", now), None];
        let seen = names(&["w", "r1", "r2", "r3", "r2", "r4"]);
        let changes = plan(&seen, &names(&["w"]), &slots, now, Duration::from_secs(30));
        assert_eq!(
            changes,
            [
                Change::Add {
                    slot: 0,
                    instance: "r2".into()
                },
                Change::Add {
                    slot: 2,
                    instance: "r3".into()
                },
                Change::NoRoom {
                    instance: "r4".into()
                },
            ]
        );
    }

    #[test]
    fn an_instance_is_removed_after_the_grace_only() {
        let start = Instant::now();
        let grace = Duration::from_secs(30);
        let mut slots = [slot("r1", start), slot("r2", start)];
        let seen = names(&["w", "r1"]);
        let later = start + Duration::from_secs(29);
        touch(&mut slots, &seen, later);
        assert_eq!(slots[0].as_ref().unwrap().last_seen, later);
        assert_eq!(slots[1].as_ref().unwrap().last_seen, start);
        assert!(plan(&seen, &names(&["w"]), &slots, later, grace).is_empty());
        let at_grace = start + grace;
        assert_eq!(
            plan(&seen, &names(&["w"]), &slots, at_grace, grace),
            [Change::Remove {
                slot: 1,
                why: Removal::Vanished
            }]
        );
    }

    #[test]
    fn a_slot_whose_instance_a_configured_node_reports_is_freed_at_once() {
        let now = Instant::now();
        let slots = [slot("r1", now)];
        let seen = names(&["r1", "old-writer"]);
        let changes = plan(&seen, &names(&["r1"]), &slots, now, Duration::from_secs(30));
        // The freed slot is not reused in the same plan.
        assert_eq!(
            changes,
            [
                Change::Remove {
                    slot: 0,
                    why: Removal::Configured
                },
                Change::NoRoom {
                    instance: "old-writer".into()
                },
            ]
        );
    }

    #[test]
    fn nothing_seen_nothing_added() {
        let now = Instant::now();
        assert!(plan(&[], &[], &[None, None], now, Duration::from_secs(1)).is_empty());
    }
}
