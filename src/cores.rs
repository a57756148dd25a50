//! Which cores threads may run on: the affinity masks behind the pinned serving
//! threads (see `http::steer`) and the core slots transform jobs take.
//!
//! A transform job runs on a blocking-pool thread, free to run on any core. Left to
//! the scheduler, two jobs often shared one core while the other idled: a job woken
//! while both cores were busy queued behind another, and when the other core went
//! idle a moment later it did not take the waiting job (a trace of uncached
//! thumbnails at 4 connections showed one core idle for 9 ms while two jobs took
//! 4 ms turns on the other; the cores were 85% busy with four jobs in flight).
//! [`CoreSlots`] gives each job a core of its own for as long as it runs, while there
//! is a free one: the thread is pinned to it, and unpinned when the job ends.

use std::sync::{Arc, Mutex};

/// The cores this process may run on, from its affinity mask.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The calling thread's set.
    pub fn current() -> std::io::Result<Self> {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self(set))
        }
    }

    /// The cores in the set, in order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: the index is below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &self.0) })
            .collect()
    }

    /// A set of one core. Past `CPU_SETSIZE` (no core `cpus` lists is) the set is
    /// empty, and `apply` fails.
    pub fn only(cpu: usize) -> Self {
        // SAFETY: as in `current`; the index is checked against the set's size first.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
            Self(set)
        }
    }

    /// Restricts the calling thread to the set. Threads it starts inherit it.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY: passes a valid cpu_set_t of the size given.
        let status =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if status != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The cores transform jobs may be pinned to, and which of them have a job now.
pub struct CoreSlots {
    cores: Vec<usize>,
    busy: Mutex<Vec<bool>>,
    /// What a thread's affinity goes back to when its job ends.
    usable: CpuSet,
}

impl CoreSlots {
    /// Slots on `cores`, for threads whose affinity is otherwise `usable`.
    pub fn new(cores: Vec<usize>, usable: CpuSet) -> Self {
        let busy = Mutex::new(vec![false; cores.len()]);
        Self {
            cores,
            busy,
            usable,
        }
    }

    /// Pins the calling thread to a core no other job holds, the one it is on if that
    /// one is free, until the slot drops. `None` when every core has a job (more
    /// transform workers than cores): the job then runs wherever the scheduler puts it.
    pub fn take(self: &Arc<Self>) -> Option<CoreSlot> {
        // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
        let here = usize::try_from(unsafe { libc::sched_getcpu() }).ok();
        let index = {
            let mut busy = self.busy.lock().expect("core slots lock");
            let free = |index: &usize| !busy[*index];
            let index = here
                .and_then(|cpu| self.cores.iter().position(|&core| core == cpu))
                .filter(free)
                .or_else(|| (0..busy.len()).find(free))?;
            busy[index] = true;
            index
        };
        let slot = CoreSlot {
            slots: Arc::clone(self),
            index,
        };
        if let Err(err) = CpuSet::only(self.cores[index]).apply() {
            tracing::warn!(core = self.cores[index], error = %err, "could not pin a transform job");
        }
        Some(slot)
    }
}

/// A core held by a transform job; dropping it unpins the thread and frees the core.
pub struct CoreSlot {
    slots: Arc<CoreSlots>,
    index: usize,
}

impl Drop for CoreSlot {
    fn drop(&mut self) {
        if let Err(err) = self.slots.usable.apply() {
            tracing::warn!(error = %err, "could not unpin a thread after its transform job");
        }
        self.slots.busy.lock().expect("core slots lock")[self.index] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_gets_a_core_of_its_own_until_it_ends() {
        let usable = CpuSet::current().unwrap();
        let cores = usable.cpus();
        let slots = Arc::new(CoreSlots::new(cores.clone(), usable));
        std::thread::spawn(move || {
            let held: Vec<CoreSlot> = cores.iter().map_while(|_| slots.take()).collect();
            assert_eq!(held.len(), cores.len(), "one slot a core");
            assert!(slots.take().is_none(), "no core left");
            let last = held.last().unwrap();
            let pinned = slots.cores[last.index];
            assert_eq!(CpuSet::current().unwrap().cpus(), vec![pinned]);
            let mut taken: Vec<usize> = held.iter().map(|slot| slots.cores[slot.index]).collect();
            taken.sort_unstable();
            assert_eq!(taken, cores, "every core once");
            drop(held);
            assert_eq!(CpuSet::current().unwrap().cpus(), cores, "unpinned");
            let again = slots.take().expect("a core is free again");
            assert_eq!(
                CpuSet::current().unwrap().cpus(),
                vec![slots.cores[again.index]]
            );
        })
        .join()
        .unwrap();
    }
}
