//! Where the two rings live and how big they are: the server's choice (identical to
//! libxenvchan's `libxenvchan_server_init`) and the client's validation of what it finds.

use core::fmt;

use crate::abi::{
    GRANTS, LARGE_RING_OFFSET, LARGE_RING_SHIFT, MAX_RING_SHIFT, MAX_RING_SIZE, PAGE_SHIFT,
    PAGE_SIZE, SMALL_RING_OFFSET, SMALL_RING_SHIFT,
};

/// Where one ring's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Inside the control page, at this byte offset.
    InPage {
        /// Byte offset in the control page.
        offset: usize,
    },
    /// In this many separately granted pages (their refs are in the control page's grant list).
    Pages {
        /// Number of pages.
        count: usize,
    },
}

/// The orders of the two rings, validated: each in `10..=20`, not both in-page rings of the same
/// size, and a grant list that fits before any in-page ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    left_order: u16,
    right_order: u16,
}

/// A ring layout that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// A requested minimum ring size is above 1 MiB.
    TooLarge {
        /// The size asked for.
        requested: usize,
    },
    /// An order outside `10..=20`.
    OrderOutOfRange {
        /// Which ring.
        ring: Side,
        /// The order found.
        order: u16,
    },
    /// Both rings are in-page rings of the same size, so they would overlap.
    SameInPageOrder {
        /// The order both rings claim.
        order: u16,
    },
    /// The grant list would run past the end of the header area into an in-page ring.
    GrantListOverlaps {
        /// Where the grant list would end.
        end: usize,
        /// Where the first in-page ring begins (or the page size).
        limit: usize,
    },
}

/// One of the two rings, named as in the control page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client-to-server ring.
    Left,
    /// The server-to-client ring.
    Right,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Left => "left (client-to-server)",
            Side::Right => "right (server-to-client)",
        })
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooLarge { requested } => write!(
                f,
                "a ring of {requested} bytes was requested but the largest is {MAX_RING_SIZE}"
            ),
            LayoutError::OrderOutOfRange { ring, order } => write!(
                f,
                "the {ring} ring has order {order}, outside {SMALL_RING_SHIFT}..={MAX_RING_SHIFT}"
            ),
            LayoutError::SameInPageOrder { order } => {
                write!(f, "both rings claim the same in-page ring of order {order}")
            }
            LayoutError::GrantListOverlaps { end, limit } => write!(
                f,
                "the grant list ends at byte {end}, past the limit of {limit}"
            ),
        }
    }
}

impl core::error::Error for LayoutError {}

/// The smallest page-ring order that holds `size` bytes (libxenvchan's `min_order`).
fn min_page_order(size: usize) -> u16 {
    let mut order = PAGE_SHIFT;
    while size > 1usize << order {
        order += 1;
    }
    order
}

impl Layout {
    /// The server's choice for rings of at least `left_min` bytes (the server's receive ring) and
    /// `right_min` bytes (its send ring), exactly as libxenvchan chooses: in-page rings whenever
    /// they can avoid extra pages.
    pub fn for_min_sizes(left_min: usize, right_min: usize) -> Result<Layout, LayoutError> {
        for requested in [left_min, right_min] {
            if requested > MAX_RING_SIZE {
                return Err(LayoutError::TooLarge { requested });
            }
        }
        let small = 1usize << SMALL_RING_SHIFT;
        let large = 1usize << LARGE_RING_SHIFT;
        let mut left_order = min_page_order(left_min);
        let mut right_order = min_page_order(right_min);
        if left_min <= small && right_min <= large {
            left_order = SMALL_RING_SHIFT;
            right_order = LARGE_RING_SHIFT;
        } else if left_min <= large && right_min <= small {
            left_order = LARGE_RING_SHIFT;
            right_order = SMALL_RING_SHIFT;
        } else if left_min <= large {
            left_order = LARGE_RING_SHIFT;
        } else if right_min <= large {
            right_order = LARGE_RING_SHIFT;
        }
        Layout::from_orders(left_order, right_order)
    }

    /// Validate the orders a client read from the control page.
    pub fn from_orders(left_order: u16, right_order: u16) -> Result<Layout, LayoutError> {
        for (ring, order) in [(Side::Left, left_order), (Side::Right, right_order)] {
            if !(SMALL_RING_SHIFT..=MAX_RING_SHIFT).contains(&order) {
                return Err(LayoutError::OrderOutOfRange { ring, order });
            }
        }
        if left_order == right_order && left_order < PAGE_SHIFT {
            return Err(LayoutError::SameInPageOrder { order: left_order });
        }
        let layout = Layout {
            left_order,
            right_order,
        };
        let end = layout.grant_list_end();
        let limit = layout.first_in_page_ring();
        if end > limit {
            return Err(LayoutError::GrantListOverlaps { end, limit });
        }
        Ok(layout)
    }

    /// The order of a ring.
    pub fn order(&self, side: Side) -> u16 {
        match side {
            Side::Left => self.left_order,
            Side::Right => self.right_order,
        }
    }

    /// The size of a ring in bytes.
    pub fn size(&self, side: Side) -> usize {
        1 << self.order(side)
    }

    /// Where a ring's bytes are.
    pub fn placement(&self, side: Side) -> Placement {
        match self.order(side) {
            SMALL_RING_SHIFT => Placement::InPage {
                offset: SMALL_RING_OFFSET,
            },
            LARGE_RING_SHIFT => Placement::InPage {
                offset: LARGE_RING_OFFSET,
            },
            order => Placement::Pages {
                count: 1 << (order - PAGE_SHIFT),
            },
        }
    }

    /// How many external pages a ring needs (0 for an in-page ring).
    pub fn pages(&self, side: Side) -> usize {
        match self.placement(side) {
            Placement::InPage { .. } => 0,
            Placement::Pages { count } => count,
        }
    }

    /// The range of the grant list (as indices of u32 entries) that belongs to a ring: left pages
    /// come first, then right pages.
    pub fn grant_indices(&self, side: Side) -> core::ops::Range<usize> {
        let left = self.pages(Side::Left);
        match side {
            Side::Left => 0..left,
            Side::Right => left..left + self.pages(Side::Right),
        }
    }

    /// The byte offset in the control page just past the grant list.
    pub fn grant_list_end(&self) -> usize {
        GRANTS + 4 * (self.pages(Side::Left) + self.pages(Side::Right))
    }

    fn first_in_page_ring(&self) -> usize {
        [Side::Left, Side::Right]
            .into_iter()
            .filter_map(|side| match self.placement(side) {
                Placement::InPage { offset } => Some(offset),
                Placement::Pages { .. } => None,
            })
            .min()
            .unwrap_or(PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(left: usize, right: usize) -> (u16, u16) {
        let l = Layout::for_min_sizes(left, right).unwrap();
        (l.order(Side::Left), l.order(Side::Right))
    }

    #[test]
    fn zero_request_gives_both_in_page_rings_in_one_grant() {
        let l = Layout::for_min_sizes(0, 0).unwrap();
        assert_eq!((l.order(Side::Left), l.order(Side::Right)), (10, 11));
        assert_eq!(l.placement(Side::Left), Placement::InPage { offset: 1024 });
        assert_eq!(l.placement(Side::Right), Placement::InPage { offset: 2048 });
        assert_eq!(l.grant_list_end(), GRANTS);
    }

    #[test]
    fn server_choice_matches_libxenvchan_in_every_branch() {
        assert_eq!(orders(1024, 2048), (10, 11));
        assert_eq!(orders(2048, 1024), (11, 10));
        assert_eq!(orders(1025, 1024), (11, 10));
        assert_eq!(orders(2048, 2048), (11, 12));
        assert_eq!(orders(2000, 5000), (11, 13));
        assert_eq!(orders(5000, 2048), (13, 11));
        assert_eq!(orders(4096, 4096), (12, 12));
        assert_eq!(orders(4097, 65536), (13, 16));
        assert_eq!(orders(1 << 20, 1 << 20), (20, 20));
        assert_eq!(orders(3000, 1), (12, 11));
    }

    #[test]
    fn requests_above_one_mebibyte_are_refused() {
        assert_eq!(
            Layout::for_min_sizes((1 << 20) + 1, 0),
            Err(LayoutError::TooLarge {
                requested: (1 << 20) + 1
            })
        );
        assert!(Layout::for_min_sizes(0, usize::MAX).is_err());
    }

    #[test]
    fn client_rejects_bad_orders() {
        assert!(matches!(
            Layout::from_orders(9, 11),
            Err(LayoutError::OrderOutOfRange {
                ring: Side::Left,
                ..
            })
        ));
        assert!(matches!(
            Layout::from_orders(12, 21),
            Err(LayoutError::OrderOutOfRange {
                ring: Side::Right,
                ..
            })
        ));
        assert!(matches!(
            Layout::from_orders(u16::MAX, 12),
            Err(LayoutError::OrderOutOfRange { .. })
        ));
        assert_eq!(
            Layout::from_orders(10, 10),
            Err(LayoutError::SameInPageOrder { order: 10 })
        );
        assert_eq!(
            Layout::from_orders(11, 11),
            Err(LayoutError::SameInPageOrder { order: 11 })
        );
        assert!(Layout::from_orders(12, 12).is_ok());
    }

    #[test]
    fn client_rejects_a_grant_list_that_runs_into_an_in_page_ring() {
        // 256 left pages = 1024 bytes of grants from offset 24: past the 1024-byte ring's start.
        assert_eq!(
            Layout::from_orders(20, 10),
            Err(LayoutError::GrantListOverlaps {
                end: 24 + 1024,
                limit: 1024
            })
        );
        // Into the 2048-byte ring: 256 + 256 pages would end at 2072.
        assert!(Layout::from_orders(20, 11).is_ok());
        // Two page rings of 1 MiB: 512 grants end at 2072, inside the page.
        assert!(Layout::from_orders(20, 20).is_ok());
    }

    #[test]
    fn every_server_choice_passes_client_validation() {
        let sizes = [
            0,
            1,
            1023,
            1024,
            1025,
            2047,
            2048,
            2049,
            4096,
            4097,
            65536,
            1 << 19,
            1 << 20,
        ];
        for &l in &sizes {
            for &r in &sizes {
                let layout = Layout::for_min_sizes(l, r).unwrap();
                assert!(layout.size(Side::Left) >= l && layout.size(Side::Right) >= r);
                assert_eq!(
                    Layout::from_orders(layout.order(Side::Left), layout.order(Side::Right)),
                    Ok(layout)
                );
            }
        }
    }

    #[test]
    fn grant_indices_put_left_pages_first() {
        let l = Layout::from_orders(13, 12).unwrap();
        assert_eq!(l.grant_indices(Side::Left), 0..2);
        assert_eq!(l.grant_indices(Side::Right), 2..3);
        assert_eq!(l.grant_list_end(), 24 + 12);
    }
}
