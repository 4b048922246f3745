//! Instants a duration from now that never overflow.

use std::time::Duration;

use tokio::time::Instant;

/// About thirty years: later than any deadline anyone means.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `start + wait`, or about thirty years from `start` when that would
/// overflow (a configured duration of `u64::MAX` seconds validates).
pub(crate) fn after(start: Instant, wait: Duration) -> Instant {
    // Tokio's own far future is this far too; the last resort is a day.
    start
        .checked_add(wait.min(FAR))
        .or_else(|| start.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(86_400));
    }
}
