//! Synchronisation helpers shared by the threads: poison-tolerant locking and the snapshot
//! semaphore. Nothing here knows what it guards.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: the data behind our mutexes stays valid even if a
/// thread panicked while holding one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cv`, recovering from poisoning as `lock` does.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// Caps how many snapshots run at once in the process (`snapshot-concurrency`): a snapshot
/// streams a whole db file and many at once would compete for memory and disk.
pub struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    /// A semaphore with `n` permits (at least one).
    pub fn new(n: usize) -> Self {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Waits for a permit; it is given back when the returned guard drops.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = wait(&self.cv, free);
        }
        *free -= 1;
        Permit(self)
    }
}

/// A held permit of a [`Semaphore`].
pub struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn semaphore_limits() {
        let s = Semaphore::new(1);
        let p = s.acquire();
        assert_eq!(*lock(&s.free), 0);
        drop(p);
        assert_eq!(*lock(&s.free), 1);
    }

    #[test]
    fn semaphore_caps_holders() {
        let sem = Arc::new(Semaphore::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (sem, inside, most) = (sem.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    let _p = sem.acquire();
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(inside.load(Ordering::SeqCst), 0);
    }
}
