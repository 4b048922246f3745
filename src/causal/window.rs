//! Read-your-writes in a causal scope, decided: what a successful write
//! leaves for the scope's later reads (a token, or a window on the
//! primary), and what a read then asks of its node. Pure, over instants on
//! Tokio's monotonic clock.

use tokio::time::Instant;

use crate::causal::lsn::CausalToken;
use crate::config::clock;
use crate::config::{CausalSettings, ReadYourWrites};

/// What one write in a scope knows about the reads after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The newest causal token (the client's, or a write's position).
    pub(crate) token: Option<CausalToken>,
    /// Until when reads go to the primary (a write with no position, or
    /// every write under [`ReadYourWrites::Window`]).
    pub(crate) primary_until: Option<Instant>,
}

impl Seen {
    /// A scope that starts at `token`.
    pub(crate) fn starting_at(token: Option<CausalToken>) -> Self {
        Self {
            token,
            primary_until: None,
        }
    }

    /// After a write that succeeded at `now` with `token`
    /// ([`CausalToken::PRIMARY`] when it has no position: the server
    /// refused the token query, or none was sent). A position advances the
    /// token under [`ReadYourWrites::Positions`]; anything else (no
    /// position, or the window chosen) opens the window from `now`, or
    /// keeps a later end an earlier write gave.
    pub(crate) fn wrote(&mut self, token: CausalToken, settings: &CausalSettings, now: Instant) {
        let positioned = token != CausalToken::PRIMARY;
        if positioned && settings.read_your_writes == ReadYourWrites::Positions {
            self.advance(token);
            return;
        }
        let until = clock::after(now, settings.primary_window);
        self.primary_until = Some(self.primary_until.map_or(until, |known| known.max(until)));
    }

    /// The later of the scope's token and `token`.
    pub(crate) fn advance(&mut self, token: CausalToken) {
        self.token = Some(self.token.map_or(token, |known| known.max(token)));
    }

    /// The token a read routed at `now` carries: [`CausalToken::PRIMARY`]
    /// (the primary only) while the window is open, whatever else it was
    /// given; else the one it was given (`explicit`), else the scope's.
    pub(crate) fn read_after(
        &self,
        explicit: Option<CausalToken>,
        now: impl FnOnce() -> Instant,
    ) -> Option<CausalToken> {
        match self.primary_until {
            Some(until) if now() < until => Some(CausalToken::PRIMARY),
            _ => explicit.or(self.token),
        }
    }

    /// Whether a write in the scope asks for its position.
    pub(crate) fn wants_position(settings: &CausalSettings) -> bool {
        settings.read_your_writes == ReadYourWrites::Positions
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::causal::lsn::Lsn;

    /// How long the window has left at `now` (zero once closed, or none open).
    fn left(seen: &Seen, now: Instant) -> Duration {
        seen.primary_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    fn settings(mode: ReadYourWrites, window_ms: u64) -> CausalSettings {
        CausalSettings {
            read_your_writes: mode,
            primary_window: Duration::from_millis(window_ms),
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_without_a_position_sends_reads_to_the_primary_for_the_window() {
        let settings = settings(ReadYourWrites::Positions, 2000);
        let mut seen = Seen::starting_at(None);
        assert_eq!(seen.read_after(None, Instant::now), None, "no write yet");
        seen.wrote(CausalToken::PRIMARY, &settings, Instant::now());
        assert_eq!(seen.token, None, "no token for the client: it would pin it");
        // (time since the write, the token a read carries)
        let table = [
            (0, Some(CausalToken::PRIMARY)),
            (1999, Some(CausalToken::PRIMARY)),
            (2000, None),
            (5000, None),
        ];
        let start = Instant::now();
        for (after, expected) in table {
            tokio::time::advance(start + ms(after) - Instant::now()).await;
            assert_eq!(seen.read_after(None, Instant::now), expected, "{after} ms");
        }
        assert_eq!(left(&seen, Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn each_write_restarts_the_window_and_an_earlier_one_never_shortens_it() {
        let settings = settings(ReadYourWrites::Window, 1000);
        let start = Instant::now();
        let mut seen = Seen::starting_at(None);
        seen.wrote(CausalToken::PRIMARY, &settings, start);
        tokio::time::advance(ms(800)).await;
        seen.wrote(CausalToken::PRIMARY, &settings, Instant::now());
        assert_eq!(left(&seen, Instant::now()), ms(1000));
        tokio::time::advance(ms(999)).await;
        assert_eq!(
            seen.read_after(None, Instant::now),
            Some(CausalToken::PRIMARY),
            "1799 ms after the first write, 999 after the second"
        );
        // A write whose answer is recorded late (an earlier instant) keeps
        // the later end.
        seen.wrote(CausalToken::PRIMARY, &settings, start);
        tokio::time::advance(ms(1)).await;
        assert_eq!(seen.read_after(None, Instant::now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_position_wins_unless_the_window_is_chosen() {
        let token = CausalToken::on_timeline(1, Lsn(0x500));
        let now = Instant::now();
        let mut positions = Seen::starting_at(None);
        positions.wrote(token, &settings(ReadYourWrites::Positions, 2000), now);
        assert_eq!(positions.token, Some(token));
        assert_eq!(positions.primary_until, None, "no window with a position");
        assert_eq!(positions.read_after(None, Instant::now), Some(token));

        let mut window = Seen::starting_at(None);
        window.wrote(token, &settings(ReadYourWrites::Window, 2000), now);
        assert_eq!(window.token, None, "the position is not used");
        assert_eq!(
            window.read_after(None, Instant::now),
            Some(CausalToken::PRIMARY)
        );
        tokio::time::advance(ms(2000)).await;
        assert_eq!(window.read_after(None, Instant::now), None);
        assert!(Seen::wants_position(&CausalSettings::default()));
        assert!(!Seen::wants_position(&settings(ReadYourWrites::Window, 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_covers_an_explicit_token_and_then_gives_way_to_it() {
        let client = CausalToken::on_timeline(1, Lsn(0x100));
        let explicit = CausalToken::on_timeline(1, Lsn(0x200));
        let mut seen = Seen::starting_at(Some(client));
        assert_eq!(seen.read_after(None, Instant::now), Some(client));
        assert_eq!(
            seen.read_after(Some(explicit), Instant::now),
            Some(explicit)
        );
        seen.wrote(
            CausalToken::PRIMARY,
            &settings(ReadYourWrites::Positions, 100),
            Instant::now(),
        );
        assert_eq!(
            seen.read_after(Some(explicit), Instant::now),
            Some(CausalToken::PRIMARY)
        );
        tokio::time::advance(ms(100)).await;
        assert_eq!(seen.read_after(None, Instant::now), Some(client));
        assert_eq!(
            seen.read_after(Some(explicit), Instant::now),
            Some(explicit)
        );
    }

    #[test]
    fn a_huge_window_saturates_instead_of_overflowing() {
        let now = Instant::now();
        let mut seen = Seen::starting_at(None);
        seen.wrote(
            CausalToken::PRIMARY,
            &settings(ReadYourWrites::Window, u64::MAX),
            now,
        );
        assert!(seen.primary_until.is_some_and(|until| until > now));
        assert_eq!(
            seen.read_after(None, || now + Duration::from_secs(86_400)),
            Some(CausalToken::PRIMARY)
        );
    }

    #[test]
    fn the_clock_is_read_only_while_a_window_is_open() {
        let seen = Seen::starting_at(None);
        let token = seen.read_after(None, || unreachable!("no window: no clock read"));
        assert_eq!(token, None);
    }
}
