//! The memory budget: how many bytes of images the server holds at once.
//!
//! A count of jobs does not bound memory: one 50 MP decode weighs as much as a
//! hundred thumbnails of small photos. So every upload buffer and every transform
//! reserves what it will hold before it holds it (an upload its declared length, a
//! transform its decoded size from the header), and waits while the budget is spent.
//! At most `max_queued` wait; the next one is refused with 429 at once, so a flood
//! costs neither memory nor an unbounded queue. A single job larger than the whole
//! budget reserves all of it and runs alone rather than never.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorKind, Result};

/// Bytes per permit: reservations are rounded up to whole KiB.
const UNIT: u64 = 1024;

/// A budget of bytes shared by uploads and transforms.
#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    capacity: u32,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Bytes held from the budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    pub fn new(bytes: u64, max_waiting: usize) -> Self {
        let capacity = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Reserves `bytes`, waiting while the budget is spent; 429 when `max_waiting`
    /// others are waiting already.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let units = self.units(bytes);
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_many_owned(units) {
            return Ok(Reservation::holding(permit));
        }
        let _waiting = Waiting::enter(&self.waiting);
        if self.waiting.load(Ordering::SeqCst) > self.max_waiting {
            return Err(busy());
        }
        Arc::clone(&self.permits)
            .acquire_many_owned(units)
            .await
            .map(Reservation::holding)
            .map_err(|_| Error::internal("the memory budget is closed"))
    }

    /// Grows `reservation` to `total` bytes (or the whole budget, if less) if the
    /// budget has them now; 429 if not. For bodies of unknown length and for jobs that
    /// already hold part of the budget, which cannot wait for more without risking a
    /// deadlock with others doing the same.
    pub fn grow_to(&self, reservation: &mut Reservation, total: u64) -> Result<()> {
        let target = self.units(total);
        let held = reservation.units();
        if held >= target {
            return Ok(());
        }
        let more = Arc::clone(&self.permits)
            .try_acquire_many_owned(target - held)
            .map_err(|_| busy())?;
        match &mut reservation.permit {
            Some(permit) => permit.merge(more),
            None => reservation.permit = Some(more),
        }
        Ok(())
    }

    /// [`Self::grow_to`], or gives back what `reservation` holds beyond `total`: for a
    /// job that reserved from an estimate before it could read its header.
    pub fn fit_to(&self, reservation: &mut Reservation, total: u64) -> Result<()> {
        let spare = reservation.units().saturating_sub(self.units(total));
        match (&mut reservation.permit, spare) {
            (Some(permit), 1..) => drop(permit.split(spare as usize)),
            _ => self.grow_to(reservation, total)?,
        }
        Ok(())
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        u64::from(self.capacity) * UNIT - self.available()
    }

    /// Reservations waiting for the budget now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn units(&self, bytes: u64) -> u32 {
        (bytes.div_ceil(UNIT).max(1)).min(u64::from(self.capacity)) as u32
    }
}

/// Counts a waiter while it lives, so that a request cancelled mid-wait (its client
/// gone) is not counted as waiting for ever.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reservation {
    /// Holds nothing (a body whose length is not known yet).
    pub fn none() -> Self {
        Self { permit: None }
    }

    fn holding(permit: OwnedSemaphorePermit) -> Self {
        Self {
            permit: Some(permit),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        u64::from(self.units()) * UNIT
    }

    fn units(&self) -> u32 {
        self.permit
            .as_ref()
            .map_or(0, |permit| permit.num_permits() as u32)
    }
}

fn busy() -> Error {
    Error::new(
        ErrorKind::TooManyRequests,
        "too_many_requests",
        "the server's memory budget is spent and its queue is full; retry in a moment",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_the_budget_and_overflow_with_429() {
        let budget = Arc::new(MemoryBudget::new(10 * UNIT, 1));
        let first = budget.reserve(8 * UNIT).await.unwrap();
        assert_eq!(budget.available(), 2 * UNIT);
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(5 * UNIT).await.map(|r| r.bytes()) })
        };
        tokio::task::yield_now().await;
        let refused = budget.reserve(5 * UNIT).await.unwrap_err();
        assert_eq!(
            refused.kind,
            ErrorKind::TooManyRequests,
            "one may wait, not two"
        );
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap(), 5 * UNIT);
        // Larger than the whole budget: all of it, alone.
        assert_eq!(budget.reserve(100 * UNIT).await.unwrap().bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn a_waiter_cancelled_mid_wait_stops_counting() {
        let budget = Arc::new(MemoryBudget::new(4 * UNIT, 1));
        let held = budget.reserve(4 * UNIT).await.unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(UNIT).await.map(|r| r.bytes()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 1);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
        // So the one place in the queue is free again.
        let again = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(UNIT).await.map(|r| r.bytes()) })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(again.await.unwrap().unwrap(), UNIT);
    }

    #[tokio::test]
    async fn a_growing_reservation_is_refused_rather_than_waiting() {
        let budget = MemoryBudget::new(4 * UNIT, 8);
        let mut body = Reservation::none();
        budget.grow_to(&mut body, 3 * UNIT).unwrap();
        assert_eq!(body.bytes(), 3 * UNIT);
        let other = budget.reserve(UNIT).await.unwrap();
        assert!(budget.grow_to(&mut body, 4 * UNIT).is_err());
        drop(other);
        // Past the whole budget, the whole budget is enough.
        budget.grow_to(&mut body, 100 * UNIT).unwrap();
        assert_eq!(body.bytes(), 4 * UNIT);
        drop(body);
        assert_eq!(budget.available(), 4 * UNIT);
    }

    #[tokio::test]
    async fn fitting_gives_back_what_an_estimate_held_too_many() {
        let budget = MemoryBudget::new(10 * UNIT, 8);
        let mut job = budget.reserve(8 * UNIT).await.unwrap();
        budget.fit_to(&mut job, 3 * UNIT).unwrap();
        assert_eq!(job.bytes(), 3 * UNIT);
        assert_eq!(budget.available(), 7 * UNIT);
        assert_eq!(budget.reserved(), 3 * UNIT);
        budget.fit_to(&mut job, 5 * UNIT).unwrap();
        assert_eq!(job.bytes(), 5 * UNIT);
        drop(job);
        assert_eq!(budget.available(), 10 * UNIT);
    }
}
