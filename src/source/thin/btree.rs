//! Reading dm persistent-data btrees: point lookups and an ordered cursor that can skip whole
//! subtrees without reading them.
//!
//! In an internal node, `keys[i]` is a lower bound of every key below child `i`, and every key
//! below child `i` is smaller than `keys[i + 1]`. The cursor checks those bounds as it descends,
//! so a damaged tree cannot make it yield keys out of order.

use super::format::Node;
use super::io::MetadataDev;
use super::ThinError;

/// Deeper than any real tree (a 4 KiB node holds over a hundred children); catches pointer
/// cycles in damaged metadata.
const MAX_DEPTH: usize = 32;

pub fn read_node(
    dev: &mut MetadataDev,
    block: u64,
    leaf_value_size: usize,
) -> Result<Node, ThinError> {
    let path = dev.path().to_path_buf();
    let b = dev.read(block)?;
    Node::decode(&path, block, b, leaf_value_size)
}

fn corrupt(dev: &MetadataDev, block: u64, message: String) -> ThinError {
    ThinError::Corrupt {
        path: dev.path().to_path_buf(),
        block,
        message,
    }
}

/// Checks that the keys of `node` (read from `block`) lie in `[lower, upper)`, the range its
/// parent gives it (`upper` None: unbounded).
fn check_range(
    dev: &MetadataDev,
    block: u64,
    node: &Node,
    lower: u64,
    upper: Option<u64>,
) -> Result<(), ThinError> {
    if let (Some(&first), Some(&last)) = (node.keys.first(), node.keys.last()) {
        if first < lower || upper.is_some_and(|u| last >= u) {
            return Err(corrupt(
                dev,
                block,
                format!(
                    "btree node keys {first}..={last} fall outside the range its parent \
                     gives ({lower}..{})",
                    upper.map_or("".into(), |u| u.to_string())
                ),
            ));
        }
    }
    Ok(())
}

/// Looks `key` up in the tree rooted at `root`; returns the raw value.
pub fn lookup(
    dev: &mut MetadataDev,
    root: u64,
    key: u64,
    leaf_value_size: usize,
) -> Result<Option<Vec<u8>>, ThinError> {
    let mut block = root;
    for _ in 0..MAX_DEPTH {
        let node = read_node(dev, block, leaf_value_size)?;
        // Index of the last key <= `key`.
        let i = match node.keys.partition_point(|&k| k <= key) {
            0 => return Ok(None),
            n => n - 1,
        };
        if node.leaf {
            return Ok((node.keys[i] == key).then(|| node.value(i).to_vec()));
        }
        block = node.value_u64(i);
    }
    Err(corrupt(
        dev,
        root,
        format!("btree is deeper than {MAX_DEPTH} levels"),
    ))
}

/// Height of the tree rooted at `root` (0 for a single leaf), following the leftmost path.
/// dm btrees are balanced, so every leaf is at this depth.
pub fn height(dev: &mut MetadataDev, root: u64, leaf_value_size: usize) -> Result<u32, ThinError> {
    let mut block = root;
    for h in 0..MAX_DEPTH as u32 {
        let node = read_node(dev, block, leaf_value_size)?;
        if node.leaf {
            return Ok(h);
        }
        block = node.value_u64(0);
    }
    Err(corrupt(
        dev,
        root,
        format!("btree is deeper than {MAX_DEPTH} levels"),
    ))
}

/// What a cursor will produce next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// An unread subtree: its block, a lower bound of its keys, and its height (0 = leaf).
    Subtree {
        block: u64,
        lower: u64,
        height: u32,
    },
    /// A leaf entry (value as u64; the cursor is only used on trees with 8-byte values).
    Entry {
        key: u64,
        value: u64,
    },
    End,
}

impl Peek {
    /// The smallest key this item can contain; the end sorts after every key.
    pub fn key(&self) -> u128 {
        match *self {
            Peek::Subtree { lower, .. } => u128::from(lower),
            Peek::Entry { key, .. } => u128::from(key),
            Peek::End => u128::MAX,
        }
    }
}

struct Frame {
    node: Node,
    /// Next entry to produce.
    idx: usize,
    /// Height of this node (0 = leaf).
    height: u32,
    /// Lower bound of keys in this node, from the parent.
    lower: u64,
    /// Exclusive upper bound of keys in this node, from the parent (None = unbounded).
    upper: Option<u64>,
    block: u64,
}

/// The key range an internal node covers and its children, as seen from a cursor.
pub struct InternalView<'a> {
    /// Height of the node (its children are one lower).
    pub height: u32,
    pub lower: u64,
    /// Exclusive; None = unbounded.
    pub upper: Option<u64>,
    pub node: &'a Node,
    /// First child not yet visited.
    pub idx: usize,
}

impl InternalView<'_> {
    /// Whether this node's range contains all of `[lower, upper)`.
    pub fn covers(&self, lower: u64, upper: Option<u64>) -> bool {
        self.lower <= lower
            && match (self.upper, upper) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b <= a,
            }
    }

    /// All child block numbers.
    pub fn children(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.node.len()).map(|i| self.node.value_u64(i))
    }

    /// Child block numbers not visited yet (not read, not skipped).
    pub fn unvisited(&self) -> impl Iterator<Item = u64> + '_ {
        (self.idx..self.node.len()).map(|i| self.node.value_u64(i))
    }
}

/// An in-order cursor over a tree with u64 leaf values that can skip subtrees unread.
pub struct Cursor {
    /// A subtree not yet read, at the very start (the root).
    pending_root: Option<(u64, u32)>,
    stack: Vec<Frame>,
    last_key: Option<u64>,
}

impl Cursor {
    pub fn new(root: u64, root_height: u32) -> Self {
        Cursor {
            pending_root: Some((root, root_height)),
            stack: Vec::new(),
            last_key: None,
        }
    }

    pub fn peek(&mut self) -> Peek {
        if let Some((block, height)) = self.pending_root {
            return Peek::Subtree {
                block,
                lower: 0,
                height,
            };
        }
        while let Some(top) = self.stack.last() {
            if top.idx >= top.node.len() {
                self.stack.pop();
                continue;
            }
            let (key, value) = (top.node.keys[top.idx], top.node.value_u64(top.idx));
            return if top.node.leaf {
                Peek::Entry { key, value }
            } else {
                Peek::Subtree {
                    block: value,
                    lower: key,
                    height: top.height.saturating_sub(1),
                }
            };
        }
        Peek::End
    }

    /// Moves past the current item (an entry, or a whole subtree) without reading anything.
    pub fn advance(&mut self) {
        if self.pending_root.take().is_some() {
            return;
        }
        if let Some(top) = self.stack.last_mut() {
            top.idx += 1;
        }
    }

    /// Checks and records that leaf key `key` comes after everything produced before.
    pub fn check_order(&mut self, dev: &MetadataDev, key: u64) -> Result<(), ThinError> {
        if let Some(last) = self.last_key {
            if key <= last {
                let block = self.stack.last().map_or(0, |f| f.block);
                return Err(corrupt(
                    dev,
                    block,
                    format!("btree key {key} follows key {last}: tree is out of order"),
                ));
            }
        }
        self.last_key = Some(key);
        Ok(())
    }

    /// Reads the subtree at the cursor (which must be [`Peek::Subtree`]) and descends into it.
    pub fn descend(&mut self, dev: &mut MetadataDev) -> Result<(), ThinError> {
        let (block, lower, height, upper) = if let Some((block, height)) = self.pending_root.take()
        {
            (block, 0, height, None)
        } else {
            let top = self.stack.last_mut().expect("descend on an empty cursor");
            let i = top.idx;
            assert!(!top.node.leaf && i < top.node.len());
            top.idx += 1;
            let upper = top.node.keys.get(i + 1).copied().or(top.upper);
            (
                top.node.value_u64(i),
                top.node.keys[i],
                top.height.saturating_sub(1),
                upper,
            )
        };
        if self.stack.len() >= MAX_DEPTH {
            return Err(corrupt(
                dev,
                block,
                format!("btree is deeper than {MAX_DEPTH} levels"),
            ));
        }
        let node = read_node(dev, block, 8)?;
        if node.leaf != (height == 0) {
            return Err(corrupt(
                dev,
                block,
                "btree is not balanced (leaf and internal nodes at the same depth)".into(),
            ));
        }
        check_range(dev, block, &node, lower, upper)?;
        self.stack.push(Frame {
            node,
            idx: 0,
            height,
            lower,
            upper,
            block,
        });
        Ok(())
    }

    /// The internal node this cursor has open at `height`, if any.
    pub fn open_internal(&self, height: u32) -> Option<InternalView<'_>> {
        self.stack
            .iter()
            .rev()
            .find(|f| f.height == height && !f.node.leaf)
            .map(|f| InternalView {
                height: f.height,
                lower: f.lower,
                upper: f.upper,
                node: &f.node,
                idx: f.idx,
            })
    }

    /// The node most recently opened, if it is internal.
    pub fn top_internal(&self) -> Option<InternalView<'_>> {
        let f = self.stack.last()?;
        (!f.node.leaf).then_some(InternalView {
            height: f.height,
            lower: f.lower,
            upper: f.upper,
            node: &f.node,
            idx: f.idx,
        })
    }

    /// True when nothing is left (no pending root, no open node with entries left).
    pub fn is_done(&self) -> bool {
        self.pending_root.is_none() && self.stack.iter().all(|f| f.idx >= f.node.len())
    }

    /// The next leaf entry, reading subtrees as needed.
    pub fn next_entry(&mut self, dev: &mut MetadataDev) -> Result<Option<(u64, u64)>, ThinError> {
        loop {
            match self.peek() {
                Peek::End => return Ok(None),
                Peek::Subtree { .. } => self.descend(dev)?,
                Peek::Entry { key, value } => {
                    self.check_order(dev, key)?;
                    self.advance();
                    return Ok(Some((key, value)));
                }
            }
        }
    }
}

/// Called with each leaf entry's key and raw value.
pub type LeafVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), ThinError> + 'a;

/// Visits every leaf entry of a tree with `leaf_value_size`-byte values, in key order.
///
/// Like the cursor, the walk checks every node's keys against the range its parent gives it.
/// Besides keeping the keys in order, this bounds the work on damaged metadata: a node reached
/// under two different ranges is refused, so a tree whose internal nodes all point at one child
/// cannot make the walk visit it once per path (exponentially often).
pub fn walk(
    dev: &mut MetadataDev,
    root: u64,
    leaf_value_size: usize,
    visit: &mut LeafVisitor,
) -> Result<(), ThinError> {
    walk_node(dev, root, leaf_value_size, (0, None), 0, visit)
}

fn walk_node(
    dev: &mut MetadataDev,
    block: u64,
    leaf_value_size: usize,
    (lower, upper): (u64, Option<u64>),
    depth: usize,
    visit: &mut LeafVisitor,
) -> Result<(), ThinError> {
    if depth >= MAX_DEPTH {
        return Err(corrupt(
            dev,
            block,
            format!("btree is deeper than {MAX_DEPTH} levels"),
        ));
    }
    let node = read_node(dev, block, leaf_value_size)?;
    check_range(dev, block, &node, lower, upper)?;
    for i in 0..node.len() {
        if node.leaf {
            visit(node.keys[i], node.value(i))?;
        } else {
            let range = (node.keys[i], node.keys.get(i + 1).copied().or(upper));
            walk_node(
                dev,
                node.value_u64(i),
                leaf_value_size,
                range,
                depth + 1,
                visit,
            )?;
        }
    }
    Ok(())
}
