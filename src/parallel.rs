//! Work spread over a pool of threads, so that many reads or writes are in flight at once.
//!
//! - [`in_order`]: items filled by the pool (read, and whatever else each needs) and handed back
//!   one by one in item order, each in one of a fixed set of slots reused from item to item: the
//!   sender's reads of changed data, the exception store's metadata areas. Memory is bounded by
//!   the slots; a thread takes a free slot before it claims the next item, so the oldest item
//!   in flight always holds a slot and the pool cannot deadlock.
//! - [`for_each`]: items done in any order, the first error winning: the apply's writes and
//!   its reads of old contents.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crossbeam_channel::bounded;

use crate::error::{Error, Result};

/// Fills items `0..items` with `fill` on up to `threads` threads, each item in one of `slots`,
/// and hands every filled slot to `take` in item order; the slot is then reused. `take` may end
/// the run early with [`ControlFlow::Break`]. An error, from `fill` or `take`, ends the run when
/// its item's turn comes (the errors of later items are never seen).
pub fn in_order<S: Send>(
    items: usize,
    threads: usize,
    slots: impl IntoIterator<Item = S>,
    fill: impl Fn(usize, &mut S) -> Result<()> + Sync,
    mut take: impl FnMut(usize, &mut S) -> Result<ControlFlow<()>>,
) -> Result<()> {
    if items == 0 {
        return Ok(());
    }
    let slots: Vec<S> = slots.into_iter().collect();
    let (free_tx, free_rx) = bounded::<S>(slots.len());
    let (done_tx, done_rx) = bounded::<(usize, S, Result<()>)>(slots.len());
    for slot in slots {
        free_tx
            .send(slot)
            .expect("the channel has room for every slot");
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items) {
            let (free_rx, done_tx) = (free_rx.clone(), done_tx.clone());
            let (next, stop, fill) = (&next, &stop, &fill);
            scope.spawn(move || {
                // A slot first, then an item: the next item to take always has a slot.
                while let Ok(mut slot) = free_rx.recv() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= items || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let res = fill(i, &mut slot);
                    if done_tx.send((i, slot, res)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let result = (|| {
            let mut waiting = BTreeMap::new();
            for i in 0..items {
                let (mut slot, res) = loop {
                    if let Some(done) = waiting.remove(&i) {
                        break done;
                    }
                    let (j, slot, res) = done_rx
                        .recv()
                        .map_err(|_| Error::Invalid("reader threads ended early".into()))?;
                    waiting.insert(j, (slot, res));
                };
                res?;
                let flow = take(i, &mut slot)?;
                let _ = free_tx.send(slot);
                if flow.is_break() {
                    break;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        // Wake threads waiting for a slot or for room to hand one back, so that the scope ends.
        drop(free_tx);
        drop(done_rx);
        result
    })
}

/// Runs `work` on every item with up to `threads` threads; the first error wins, and no item is
/// started after it.
pub fn for_each<T: Send>(
    items: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let threads = items.len().min(threads);
    if threads <= 1 {
        return items.into_iter().try_for_each(work);
    }
    let queue = Mutex::new(items.into_iter());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(item) = queue.lock().unwrap().next() else {
                        break;
                    };
                    if let Err(e) = work(item) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items finish out of order (later ones sooner), yet are taken in order, with few slots.
    #[test]
    fn items_are_taken_in_order_with_slots_reused() {
        let mut taken = Vec::new();
        in_order(
            200,
            8,
            (0..10).map(|_| 0usize),
            |i, slot| {
                std::thread::sleep(std::time::Duration::from_micros(
                    ((200 - i) % 7) as u64 * 50,
                ));
                *slot = i * 3;
                Ok(())
            },
            |i, slot| {
                assert_eq!(*slot, i * 3);
                taken.push(i);
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap();
        assert_eq!(taken, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn take_can_stop_early_and_the_first_error_in_order_wins() {
        let mut taken = 0;
        in_order(
            1000,
            4,
            (0..8).map(|_| ()),
            |_, _| Ok(()),
            |i, _| {
                taken += 1;
                Ok(if i == 9 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )
        .unwrap();
        assert_eq!(taken, 10);

        let e = in_order(
            100,
            4,
            (0..8).map(|_| ()),
            |i, _| match i {
                7 | 3 => Err(Error::Invalid(format!("item {i} failed"))),
                _ => Ok(()),
            },
            |i, _| {
                assert!(i < 3, "item {i} taken after a failed one");
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "item 3 failed");
    }

    #[test]
    fn for_each_does_every_item_or_reports_an_error() {
        let sum = std::sync::atomic::AtomicU64::new(0);
        for_each((1..=100u64).collect(), 8, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), 5050);
        let e = for_each((0..100).collect(), 8, |i| match i {
            42 => Err(Error::Invalid("42 failed".into())),
            _ => Ok(()),
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "42 failed");
    }
}
