//! The difference of two devices' mapping trees.
//!
//! Both trees are walked in key order side by side. A thin snapshot starts out sharing its
//! origin's whole tree; every later write to either device copies only the path from the root
//! to the changed leaf. So wherever both cursors stand before the same node block, everything
//! beneath it is identical in both devices and is skipped unread: the work done follows the
//! size of the change, not the size of the devices.

use std::collections::HashSet;

use super::btree::{Cursor, Peek};
use super::format::unpack_block_time;
use super::io::MetadataDev;
use super::ThinError;

/// How a virtual block differs between the older device and the newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockChange {
    /// Mapped in the newer device to other data than in the older one, or only in the newer.
    Data,
    /// Mapped only in the older device: the newer one reads zeros there.
    Zero,
}

/// Counters describing the work a diff did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounters {
    /// Subtrees present in both trees and skipped unread.
    pub shared_subtrees_skipped: u64,
}

/// Walks the trees rooted at `old_root` and `new_root` and reports each differing virtual block
/// in ascending order, as runs `(first_block, count, change)`.
pub fn diff_trees(
    dev: &mut MetadataDev,
    old_root: (u64, u32),
    new_root: (u64, u32),
    emit: &mut dyn FnMut(u64, u64, BlockChange) -> Result<(), ThinError>,
) -> Result<DiffCounters, ThinError> {
    let mut old = Cursor::new(old_root.0, old_root.1);
    let mut new = Cursor::new(new_root.0, new_root.1);
    let mut counters = DiffCounters::default();
    let mut run: Option<(u64, u64, BlockChange)> = None;
    let mut push = |block: u64, change: BlockChange| -> Result<(), ThinError> {
        match &mut run {
            Some((start, len, kind)) if *kind == change && *start + *len == block => *len += 1,
            _ => {
                if let Some((start, len, kind)) = run.replace((block, 1, change)) {
                    emit(start, len, kind)?;
                }
            }
        }
        Ok(())
    };

    loop {
        let (a, b) = (old.peek(), new.peek());
        match (a, b) {
            (Peek::End, Peek::End) => break,
            (Peek::Subtree { block: x, .. }, Peek::Subtree { block: y, .. }) if x == y => {
                old.advance();
                new.advance();
                counters.shared_subtrees_skipped += 1;
            }
            (
                Peek::Subtree {
                    lower: lx,
                    height: hx,
                    ..
                },
                Peek::Subtree {
                    lower: ly,
                    height: hy,
                    ..
                },
            ) if lx == ly => {
                // Open the taller one first so that equal subtrees meet at the same height.
                if hx >= hy {
                    old.descend(dev)?;
                    prefetch_unshared(dev, &old, &new)?;
                } else {
                    new.descend(dev)?;
                    prefetch_unshared(dev, &new, &old)?;
                }
            }
            (Peek::Subtree { lower, .. }, other) if u128::from(lower) <= other.key() => {
                old.descend(dev)?;
                prefetch_unshared(dev, &old, &new)?;
            }
            (other, Peek::Subtree { lower, .. }) if u128::from(lower) <= other.key() => {
                new.descend(dev)?;
                prefetch_unshared(dev, &new, &old)?;
            }
            (Peek::Entry { key: ka, value: va }, Peek::Entry { key: kb, value: vb })
                if ka == kb =>
            {
                old.check_order(dev, ka)?;
                new.check_order(dev, kb)?;
                old.advance();
                new.advance();
                // Same data block means same contents; the time field is irrelevant.
                if unpack_block_time(va).0 != unpack_block_time(vb).0 {
                    push(ka, BlockChange::Data)?;
                }
            }
            (Peek::Entry { key, .. }, other) if u128::from(key) < other.key() => {
                old.check_order(dev, key)?;
                old.advance();
                push(key, BlockChange::Zero)?;
            }
            (_, Peek::Entry { key, .. }) => {
                new.check_order(dev, key)?;
                new.advance();
                push(key, BlockChange::Data)?;
            }
            // Every remaining combination has a subtree whose lower bound is not above the
            // other side's key, or an entry smaller than the other side's, handled above.
            (a, b) => unreachable!("diff cursor state {a:?} / {b:?}"),
        }
    }
    if let Some((start, len, kind)) = run {
        emit(start, len, kind)?;
    }
    Ok(counters)
}

/// After `opened` opened an internal node, reads ahead the children the diff will certainly
/// read: those the other tree cannot share. A node both trees share sits at the same height in
/// both. If the other cursor has open, at that height, a node covering this node's whole key
/// range, every node this one could share is among that node's children; and the other way
/// round for that node's unvisited children. When the other tree is exhausted, nothing can be
/// shared. Otherwise nothing is known and nothing is read ahead: prefetching never reads a node
/// the diff would skip.
fn prefetch_unshared(
    dev: &mut MetadataDev,
    opened: &Cursor,
    other: &Cursor,
) -> Result<(), ThinError> {
    let Some(node) = opened.top_internal() else {
        return Ok(());
    };
    if other.is_done() {
        return dev.prefetch(node.unvisited().collect::<Vec<_>>());
    }
    let Some(theirs) = other.open_internal(node.height) else {
        return Ok(());
    };
    let mut wanted = Vec::new();
    if theirs.covers(node.lower, node.upper) {
        let shared: HashSet<u64> = theirs.children().collect();
        wanted.extend(node.unvisited().filter(|c| !shared.contains(c)));
    }
    if node.covers(theirs.lower, theirs.upper) {
        let shared: HashSet<u64> = node.children().collect();
        wanted.extend(theirs.unvisited().filter(|c| !shared.contains(c)));
    }
    dev.prefetch(wanted)
}
