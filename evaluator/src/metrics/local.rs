//! Hot-path counters without atomic read-modify-write instructions.
//!
//! Each thread owns a block of cells that only it writes, with a plain load and store (no `lock`
//! prefix, no cache-line ping-pong between cores). A scrape sums every block and moves the
//! difference into the Prometheus counters, so the exposition keeps the usual families and names.
//! A thread's block outlives the thread, so no count is lost; memory is one block per thread that
//! ever counted (a few dozen bytes).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus::IntCounter;

struct Block(Box<[AtomicU64]>);

struct Family {
    blocks: Mutex<Vec<Arc<Block>>>,
    /// The Prometheus counter of each cell, and how much of it has been moved there.
    targets: Vec<IntCounter>,
    flushed: Mutex<Vec<u64>>,
}

thread_local! {
    /// This thread's blocks, one per family it has counted in (a process has one family; tests
    /// create many).
    static BLOCKS: RefCell<Vec<(Weak<Family>, Arc<Block>)>> = const { RefCell::new(Vec::new()) };
}

/// A fixed set of counters, each mirrored into a Prometheus counter at scrape time.
#[derive(Clone)]
pub struct LocalCounters(Arc<Family>);

impl LocalCounters {
    /// Counters for `targets`, cell `i` feeding `targets[i]`.
    pub fn new(targets: Vec<IntCounter>) -> Self {
        let flushed = vec![0; targets.len()];
        Self(Arc::new(Family {
            blocks: Mutex::new(Vec::new()),
            targets,
            flushed: Mutex::new(flushed),
        }))
    }

    /// Adds one to each cell in `cells` (indexes into the targets given to `new`).
    #[inline]
    pub fn add(&self, cells: &[usize]) {
        let mine = BLOCKS.try_with(|blocks| {
            let Ok(blocks) = blocks.try_borrow() else {
                return false;
            };
            let Some((_, block)) = blocks
                .iter()
                .find(|(family, _)| std::ptr::eq(family.as_ptr(), Arc::as_ptr(&self.0)))
            else {
                return false;
            };
            for &i in cells {
                if let Some(c) = block.0.get(i) {
                    // Only this thread writes this cell: load + store is exact.
                    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
                }
            }
            true
        });
        if mine != Ok(true) {
            self.add_slow(cells);
        }
    }

    #[cold]
    fn add_slow(&self, cells: &[usize]) {
        let block = Arc::new(Block(
            (0..self.0.targets.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        ));
        for &i in cells {
            if let Some(c) = block.0.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(block.clone());
        // Registering fails only during thread teardown; the block is counted all the same.
        let _ = BLOCKS.try_with(|blocks| {
            if let Ok(mut blocks) = blocks.try_borrow_mut() {
                blocks.retain(|(family, _)| family.strong_count() > 0);
                blocks.push((Arc::downgrade(&self.0), block));
            }
        });
    }

    /// The total of cell `i` across threads.
    pub fn get(&self, i: usize) -> u64 {
        self.0
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|b| b.0.get(i))
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Moves what was counted since the last flush into the Prometheus counters.
    pub fn flush(&self) {
        let mut flushed = self
            .0
            .flushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (i, target) in self.0.targets.iter().enumerate() {
            let total = self.get(i);
            let done = flushed.get(i).copied().unwrap_or(0);
            target.inc_by(total.wrapping_sub(done));
            if let Some(f) = flushed.get_mut(i) {
                *f = total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_reach_prometheus_including_threads_that_ended() {
        let a = IntCounter::new("a_total", "a").expect("valid");
        let b = IntCounter::new("b_total", "b").expect("valid");
        let c = LocalCounters::new(vec![a.clone(), b.clone()]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(&[0]);
                        c.add(&[0, 1]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        c.add(&[1]);
        assert_eq!((a.get(), b.get()), (0, 0), "nothing moves before a flush");
        c.flush();
        assert_eq!((a.get(), b.get()), (8000, 4001));
        c.add(&[1, 1]);
        c.flush();
        c.flush();
        assert_eq!((a.get(), b.get()), (8000, 4003));
    }

    #[test]
    fn two_families_on_one_thread_stay_apart() {
        let x = IntCounter::new("x_total", "x").expect("valid");
        let y = IntCounter::new("y_total", "y").expect("valid");
        let (cx, cy) = (
            LocalCounters::new(vec![x.clone()]),
            LocalCounters::new(vec![y.clone()]),
        );
        cx.add(&[0]);
        cy.add(&[0]);
        cy.add(&[0]);
        drop(cx);
        let z = IntCounter::new("z_total", "z").expect("valid");
        let cz = LocalCounters::new(vec![z.clone()]);
        cz.add(&[0]);
        cy.flush();
        cz.flush();
        assert_eq!((x.get(), y.get(), z.get()), (0, 2, 1));
    }
}
