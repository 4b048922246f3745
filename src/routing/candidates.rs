//! What each read strategy chooses among, worked out once per published
//! snapshot (nodes 0 to 63): the routable nodes, the local ones, the
//! primary, and for the nearest strategy each level's near nodes, each as a
//! mask with its members listed.
//!
//! A decision intersects a set with the nodes usable at that moment (not
//! suspect, fresh enough, not excluded). When that leaves the whole set,
//! as it does while nothing is wrong, the pick is one draw and one lookup
//! in the list; otherwise the `n`-th set bit of what is left. Both draw the
//! same number from the caller's generator and give the same node, so a
//! seed chooses the same nodes either way.

use std::time::Duration;

/// A set of nodes (0 to 63) as a mask and as the list of its members,
/// lowest index first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidates {
    mask: u64,
    len: u32,
    list: [u8; 64],
}

impl Default for Candidates {
    fn default() -> Self {
        Self::of(0)
    }
}

impl Candidates {
    /// The nodes of `mask`.
    pub(crate) fn of(mask: u64) -> Self {
        let mut list = [0; 64];
        let mut len = 0;
        for (slot, index) in list.iter_mut().zip(bits(mask)) {
            // `bits` yields 0 to 63: always a `u8`.
            *slot = index as u8;
            len += 1;
        }
        Self { mask, len, list }
    }

    /// The members, as a mask.
    #[cfg(test)]
    pub(crate) fn mask(&self) -> u64 {
        self.mask
    }

    /// A uniformly chosen member that is also in `usable`; `None` when
    /// none is. Exactly [`choose_bit`]`(self.mask() & usable)`, for one
    /// draw and one load when every member is usable.
    #[inline]
    pub(crate) fn choose(&self, usable: u64, rng: &mut fastrand::Rng) -> Option<usize> {
        let left = self.mask & usable;
        if left != self.mask || self.len == 0 {
            return choose_bit(left, rng);
        }
        let chosen = rng.u32(..self.len) as usize;
        self.list.get(chosen).map(|&index| usize::from(index))
    }
}

/// One level of the nearest strategy (a preferred region, or every region):
/// its members and, worked out over the routable ones, the near nodes when
/// the fastest of them is usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NearLevel {
    /// The level's nodes (routable or not).
    pub(crate) members: u64,
    /// The first routable member in round-trip order (one bit; 0 when none).
    pub(crate) fastest: u64,
    /// The routable members within the window of `fastest` (all of them
    /// when it is not measured).
    pub(crate) near: Candidates,
}

/// Every strategy's candidate sets for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadSets {
    /// The routable nodes.
    pub(crate) routable: Candidates,
    /// The routable local nodes.
    pub(crate) local: Candidates,
    /// The write target's bit, 0 when there is none (or beyond node 63).
    pub(crate) primary: u64,
    /// The window `levels` and `everywhere` were worked out with; `None`
    /// when they were not (a decision then walks the round trips).
    pub(crate) window: Option<Duration>,
    /// The preferred regions in order, as far as any node is in one.
    pub(crate) levels: Box<[NearLevel]>,
    /// Every region.
    pub(crate) everywhere: NearLevel,
}

impl Default for ReadSets {
    fn default() -> Self {
        Self {
            routable: Candidates::default(),
            local: Candidates::default(),
            primary: 0,
            window: None,
            levels: Box::from([]),
            everywhere: NearLevel::default(),
        }
    }
}

/// What [`ReadSets::build`] reads: the masks and round trips a snapshot
/// keeps for nodes 0 to 63.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Topology<'a> {
    /// Bit `i`: node `i` may be routed to (up, filled, not fenced).
    pub(crate) routable: u64,
    /// Bit `i`: node `i` is in the service's region.
    pub(crate) local: u64,
    /// The write target.
    pub(crate) primary: Option<usize>,
    /// Entry `k`, bit `i`: node `i` is in the `k`-th preferred region.
    pub(crate) levels: &'a [u64],
    /// Node `i`'s round trip in nanoseconds, `u64::MAX` while not measured.
    pub(crate) rtt_ns: &'a [u64],
    /// The node indexes ordered by `rtt_ns`, fastest first.
    pub(crate) by_rtt: &'a [u8],
    /// The nearest strategy's window, when known.
    pub(crate) window: Option<Duration>,
}

impl ReadSets {
    /// The sets of `topology`.
    pub(crate) fn build(topology: Topology<'_>) -> Self {
        let routable = topology.routable;
        let level = |members: u64| match topology.window {
            Some(window) => near_level(&topology, members, window),
            None => NearLevel::default(),
        };
        Self {
            routable: Candidates::of(routable),
            local: Candidates::of(routable & topology.local),
            primary: topology
                .primary
                .filter(|&index| index < 64)
                .map_or(0, |index| 1 << index),
            window: topology.window,
            levels: topology
                .levels
                .iter()
                .map(|&members| level(members))
                .collect(),
            everywhere: level(u64::MAX),
        }
    }
}

/// The level of `members`: its first routable node in round-trip order and
/// the routable members within `window` of it, as `near_sorted` finds them.
fn near_level(topology: &Topology<'_>, members: u64, window: Duration) -> NearLevel {
    let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    let in_level = members & topology.routable;
    let Some(near) = near_sorted(topology.rtt_ns, topology.by_rtt, in_level, window) else {
        return NearLevel {
            members,
            ..NearLevel::default()
        };
    };
    let fastest = topology
        .by_rtt
        .iter()
        .map(|&index| usize::from(index))
        .find(|&index| index < 64 && (in_level >> index) & 1 == 1)
        .map_or(0, |index| 1 << index);
    NearLevel {
        members,
        fastest,
        near: Candidates::of(near),
    }
}

/// The nodes of `in_level` within `window` (ns) of its fastest; every one
/// when none is measured (`u64::MAX`), as in the strategy's `is_near`;
/// `None` when `in_level` is empty. Walks the nodes fastest first
/// (`order`) and stops at the window's edge, so it reads only the near
/// nodes and the one after.
pub(crate) fn near_sorted(rtts: &[u64], order: &[u8], in_level: u64, window: u64) -> Option<u64> {
    let mut members = order
        .iter()
        .map(|&index| usize::from(index))
        .filter(|&index| index < 64 && (in_level >> index) & 1 == 1);
    let first = members.next()?;
    let fastest = *rtts.get(first)?;
    if fastest == u64::MAX {
        return Some(in_level);
    }
    let limit = fastest.saturating_add(window).min(u64::MAX - 1);
    let mut near = 1u64 << first;
    for index in members {
        if rtts.get(index).is_none_or(|&rtt| rtt > limit) {
            break;
        }
        near |= 1 << index;
    }
    Some(near)
}

/// A uniformly chosen set bit of `mask`: the `n`-th set bit, found by
/// clearing the lowest bits when `n` is small, else a byte at a time (at
/// most 8 + 8 steps for 64 nodes).
pub(crate) fn choose_bit(mask: u64, rng: &mut fastrand::Rng) -> Option<usize> {
    let count = mask.count_ones();
    if count == 0 {
        return None;
    }
    let mut n = rng.u32(..count);
    if n < 8 {
        // Few bits to skip: clear the lowest `n`.
        let mut rest = mask;
        for _ in 0..n {
            rest &= rest - 1;
        }
        return Some(rest.trailing_zeros() as usize);
    }
    let mut base = 0;
    let mut byte = mask & 0xff;
    while byte.count_ones() <= n {
        n -= byte.count_ones();
        base += 8;
        byte = (mask >> base) & 0xff;
    }
    for _ in 0..n {
        byte &= byte - 1;
    }
    Some(base + byte.trailing_zeros() as usize)
}

/// The indexes of the set bits of `mask`, lowest first.
pub(crate) fn bits(mask: u64) -> impl Iterator<Item = usize> {
    let mut rest = mask;
    std::iter::from_fn(move || {
        (rest != 0).then(|| {
            let index = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            index
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_bit_picks_the_drawn_set_bit() {
        let mut masks = fastrand::Rng::with_seed(3);
        for round in 0..20_000u64 {
            let mask = match round {
                0 => u64::MAX,
                1 => 1 << 63,
                _ => masks.u64(..) >> masks.u32(..64),
            };
            let (mut a, mut b) = (
                fastrand::Rng::with_seed(round),
                fastrand::Rng::with_seed(round),
            );
            let chosen = choose_bit(mask, &mut a);
            let expected = match mask.count_ones() {
                0 => None,
                count => bits(mask).nth(b.u32(..count) as usize),
            };
            assert_eq!(chosen, expected, "{mask:b}");
        }
    }

    /// Whether every member is usable or only some, `choose` gives what
    /// `choose_bit` gives over the usable members, draw for draw.
    #[test]
    fn choose_is_choose_bit_over_the_usable_members() {
        let mut masks = fastrand::Rng::with_seed(5);
        for round in 0..20_000u64 {
            let set = match round {
                0 => 0,
                1 => u64::MAX,
                _ => masks.u64(..) >> masks.u32(..64),
            };
            let usable = match masks.u8(..3) {
                0 => u64::MAX,
                1 => set,
                _ => masks.u64(..),
            };
            let candidates = Candidates::of(set);
            assert_eq!(candidates.mask(), set);
            let (mut a, mut b) = (
                fastrand::Rng::with_seed(round),
                fastrand::Rng::with_seed(round),
            );
            assert_eq!(
                candidates.choose(usable, &mut a),
                choose_bit(set & usable, &mut b),
                "{set:b} & {usable:b}"
            );
            assert_eq!(a.u64(..), b.u64(..), "as many draws");
        }
    }

    #[test]
    fn the_sets_follow_the_topology() {
        // Nodes 0 to 5: 0 the primary; 1, 3 and 4 local; 4 not routable;
        // round trips (ms) 9, 3, 20, 4, 1, unmeasured; region ranks:
        // level 0 = {2, 5}, level 1 = {0, 1}.
        let ms = 1_000_000;
        let rtt_ns = [9 * ms, 3 * ms, 20 * ms, 4 * ms, ms, u64::MAX];
        let mut by_rtt: Vec<u8> = (0..6).collect();
        by_rtt.sort_by_key(|&index| rtt_ns[usize::from(index)]);
        let sets = ReadSets::build(Topology {
            routable: 0b10_1111,
            local: 0b01_1010,
            primary: Some(0),
            levels: &[0b10_0100, 0b00_0011],
            rtt_ns: &rtt_ns,
            by_rtt: &by_rtt,
            window: Some(Duration::from_millis(5)),
        });
        assert_eq!(sets.routable.mask(), 0b10_1111);
        assert_eq!(sets.local.mask(), 0b00_1010);
        assert_eq!(sets.primary, 0b1);
        let [first, second] = &*sets.levels else {
            panic!("two levels: {:?}", sets.levels);
        };
        // Level 0: node 2 (20 ms) is the fastest measured; 5 is not measured.
        assert_eq!((first.fastest, first.near.mask()), (0b100, 0b100));
        // Level 1: node 1 (3 ms), node 0 (9 ms) beyond the 5 ms window.
        assert_eq!((second.fastest, second.near.mask()), (0b10, 0b10));
        // Everywhere: node 4 (1 ms) is not routable; node 1 (3 ms) is the
        // fastest, node 3 (4 ms) within the window.
        assert_eq!(sets.everywhere.fastest, 0b10);
        assert_eq!(sets.everywhere.near.mask(), 0b1010);
        // No window: nothing worked out for the nearest strategy.
        let without = ReadSets::build(Topology {
            routable: 0b1,
            local: 0,
            primary: None,
            levels: &[],
            rtt_ns: &rtt_ns,
            by_rtt: &by_rtt,
            window: None,
        });
        assert_eq!(without.everywhere, NearLevel::default());
        assert_eq!(without.primary, 0);
    }

    #[test]
    fn unmeasured_levels_are_near_as_a_whole() {
        let rtt_ns = [u64::MAX; 3];
        let sets = ReadSets::build(Topology {
            routable: 0b111,
            local: 0,
            primary: None,
            levels: &[],
            rtt_ns: &rtt_ns,
            by_rtt: &[0, 1, 2],
            window: Some(Duration::from_millis(15)),
        });
        assert_eq!(sets.everywhere.fastest, 0b1);
        assert_eq!(sets.everywhere.near.mask(), 0b111);
        let none = ReadSets::build(Topology {
            routable: 0,
            local: 0,
            primary: None,
            levels: &[],
            rtt_ns: &rtt_ns,
            by_rtt: &[0, 1, 2],
            window: Some(Duration::from_millis(15)),
        });
        assert_eq!(none.everywhere.fastest, 0);
        assert_eq!(none.everywhere.near.mask(), 0);
    }
}
