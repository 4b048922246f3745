//! WAL positions and the causal token built on them.
//!
//! Positions the server sends in binary (`pg_lsn` columns) are decoded by
//! tokio-postgres's [`PgLsn`]. Text (a probe's answer, a token from a
//! header) is parsed here instead: `PgLsn`'s `FromStr` reads each half as a
//! 64-bit number and ORs them together, so `0/1FFFFFFFF` or `+1/0` would
//! pass as some other position, and its error says nothing about why.

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use tokio_postgres::types::{FromSql, IsNull, PgLsn, ToSql, Type};

/// A PostgreSQL WAL position (`pg_lsn`), e.g. `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self` (zero when `earlier` is ahead).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<PgLsn> for Lsn {
    fn from(lsn: PgLsn) -> Self {
        Lsn(u64::from(lsn))
    }
}

impl From<Lsn> for PgLsn {
    fn from(lsn: Lsn) -> Self {
        PgLsn::from(lsn.0)
    }
}

/// Reads a `pg_lsn` column (through [`PgLsn`]).
impl<'a> FromSql<'a> for Lsn {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        PgLsn::from_sql(ty, raw).map(Lsn::from)
    }

    fn accepts(ty: &Type) -> bool {
        <PgLsn as FromSql<'_>>::accepts(ty)
    }
}

/// Binds as a `pg_lsn` parameter (through [`PgLsn`]).
impl ToSql for Lsn {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        PgLsn::from(*self).to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <PgLsn as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Text that is not a WAL position or causal token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid causal token {text:?}: {reason}")]
#[non_exhaustive]
pub struct TokenError {
    /// The text given (tokens hold no secrets), cut to 64 characters.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Lsn {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| TokenError {
            text: text.chars().take(64).collect(),
            reason,
        };
        let (high, low) = text
            .split_once('/')
            .ok_or_else(|| error("expected HIGH/LOW in hex"))?;
        let part = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error("each half must be 1 to 8 hex digits"));
            }
            u32::from_str_radix(part, 16).map_err(|_| error("not hexadecimal"))
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

/// A write's position in the primary's WAL, and the timeline it was written
/// on, handed back by
/// a write or transaction given a [`CallInfo::with_token`](crate::CallInfo::with_token)
/// slot.
///
/// Give it to a later read ([`ReadBuilder::after`](crate::ReadBuilder::after)) and that
/// read goes only to a node known to have replayed the write: a replica on
/// the token's timeline (positions on another timeline prove nothing) that
/// is receiving WAL and whose last probe showed it at or past the token, or
/// else the primary. It never waits for a replica to catch up.
///
/// It renders to a short string, `TIMELINE/HIGH/LOW` in hex (`2/16/B374D848`),
/// for an HTTP header, a cookie or a queue message, and parses back with
/// [`str::parse`]; garbage gives a [`TokenError`]. The older form without a
/// timeline (`16/B374D848`) still parses: such a token is satisfied only by
/// a replica on the current primary's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalToken {
    timeline: Option<u32>,
    lsn: Lsn,
}

impl CausalToken {
    /// A token no replica can satisfy: reads given it go to the primary.
    pub const PRIMARY: CausalToken = CausalToken {
        timeline: Some(u32::MAX),
        lsn: Lsn(u64::MAX),
    };

    /// The token for a WAL position whose timeline is not known.
    pub fn new(lsn: Lsn) -> Self {
        Self {
            timeline: None,
            lsn,
        }
    }

    /// The token for a WAL position on `timeline`.
    pub fn on_timeline(timeline: u32, lsn: Lsn) -> Self {
        Self {
            timeline: Some(timeline),
            lsn,
        }
    }

    /// The WAL position a node must have replayed.
    pub fn lsn(self) -> Lsn {
        self.lsn
    }

    /// The timeline the write was made on, when known.
    pub fn timeline(self) -> Option<u32> {
        self.timeline
    }

    /// The later of two tokens (for a session that wrote twice): the higher
    /// timeline, then the higher position.
    pub fn max(self, other: CausalToken) -> CausalToken {
        Ord::max(self, other)
    }
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timeline {
            Some(timeline) => write!(f, "{timeline:X}/{}", self.lsn),
            None => self.lsn.fmt(f),
        }
    }
}

impl FromStr for CausalToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let error = |reason| TokenError {
            text: text.chars().take(64).collect(),
            reason,
        };
        let Some((timeline, lsn)) = text.split_once('/').filter(|(_, rest)| rest.contains('/'))
        else {
            return text.parse().map(CausalToken::new);
        };
        if timeline.is_empty()
            || timeline.len() > 8
            || !timeline.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(error("the timeline must be 1 to 8 hex digits"));
        }
        let timeline = u32::from_str_radix(timeline, 16).map_err(|_| error("not hexadecimal"))?;
        if timeline == 0 {
            return Err(error("timelines start at 1"));
        }
        let lsn: Lsn = lsn
            .parse()
            .map_err(|inner: TokenError| error(inner.reason))?;
        Ok(CausalToken::on_timeline(timeline, lsn))
    }
}

/// The text form (`16/B374D848`), so a JSON status shows what `psql` does.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The stable string form of [`Display`](fmt::Display) (`2/16/B374D848`);
/// deserializing accepts what [`str::parse`] does, and garbage is an error
/// naming the reason, never a panic.
impl serde::Serialize for CausalToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CausalToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `000000020000000000000003` is on timeline 2.
pub(crate) fn timeline_of_walfile(name: &str) -> Option<u32> {
    name.get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .filter(|timeline| *timeline > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_from_wal_file_names() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000001A0000000000000003"), Some(26));
        assert_eq!(timeline_of_walfile("000000000000000000000003"), None);
        assert_eq!(timeline_of_walfile("xyz"), None);
        assert_eq!(timeline_of_walfile(""), None);
    }

    #[test]
    fn round_trips_postgres_text() {
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
            let token: CausalToken = text.parse().unwrap();
            assert_eq!(token.to_string(), text);
            assert_eq!(token.timeline(), None, "the older form has no timeline");
        }
        for text in ["1/0/0", "2/16/B374D848", "FFFFFFFF/FFFFFFFF/FFFFFFFF"] {
            let token: CausalToken = text.parse().unwrap();
            assert_eq!(token.to_string(), text);
        }
        let token: CausalToken = "2/16/B374D848".parse().unwrap();
        assert_eq!(token.timeline(), Some(2));
        assert_eq!(token.lsn(), "16/B374D848".parse().unwrap());
        assert_eq!(
            CausalToken::PRIMARY.to_string().parse::<CausalToken>(),
            Ok(CausalToken::PRIMARY)
        );
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert_eq!(" 0/10 ".parse::<CausalToken>().unwrap().lsn(), Lsn(16));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for text in [
            "",
            "/",
            "0/",
            "/0",
            "12345",
            "g/0",
            "0/zz",
            "123456789/0",
            "-1/0",
            "0/1/2",
            "1/2/3/4",
            "/1/2",
            "123456789/1/2",
            "g/1/2",
            "1/x/2",
            "🙂/1",
            // PgLsn's parser takes these (as 1/FFFFFFFF and 1/0).
            "0/1FFFFFFFF",
            "+1/0",
            "1/+2/3",
            "+1/2/3",
        ] {
            let error = text.parse::<CausalToken>().unwrap_err();
            assert!(!error.reason.is_empty(), "{text}");
        }
        let long = "x".repeat(1000);
        assert_eq!(long.parse::<CausalToken>().unwrap_err().text.len(), 64);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let token: CausalToken = "2/16/B374D848".parse().unwrap();
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, "\"2/16/B374D848\"");
        assert_eq!(serde_json::from_str::<CausalToken>(&json).unwrap(), token);
        let old: CausalToken = serde_json::from_str("\"16/B374D848\"").unwrap();
        assert_eq!(old.timeline(), None);
        let lsn: Lsn = serde_json::from_str("\"0/10\"").unwrap();
        assert_eq!(
            (lsn, serde_json::to_string(&lsn).unwrap()),
            (Lsn(16), "\"0/10\"".into())
        );
        let error = serde_json::from_str::<CausalToken>("\"1/x/2\"").unwrap_err();
        assert!(
            error.to_string().contains("invalid causal token"),
            "{error}"
        );
        assert!(serde_json::from_str::<CausalToken>("42").is_err());
    }

    #[test]
    fn ordering_and_distance() {
        let a: Lsn = "0/100".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.bytes_since(a), (1 << 32) - 0x100);
        assert_eq!(a.bytes_since(b), 0);
        assert_eq!(CausalToken::new(a).max(CausalToken::new(b)).lsn(), b);
        let old = CausalToken::on_timeline(1, b);
        let new = CausalToken::on_timeline(2, a);
        assert_eq!(old.max(new), new, "a later timeline is later");
    }
}
