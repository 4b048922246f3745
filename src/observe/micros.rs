//! Durations in status output: humantime form cut to microseconds
//! (`"4ms 956us"`), which is all a probe round trip or an age needs.

use std::time::Duration;

use serde::Serializer;

fn cut(duration: Duration) -> Duration {
    Duration::from_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(cut(*duration)))
}

pub(crate) fn option<S: Serializer>(duration: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serialize(duration, s),
        None => s.serialize_none(),
    }
}
