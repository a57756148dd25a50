//! Which runtime serves a new connection, and which core each runtime runs on.
//!
//! `progimage serve` runs one single-threaded runtime per core, each on a thread
//! pinned to its core, and a connection stays on the runtime it is given until its
//! client moves (see `Placed`). It is given to the runtime of the core its packets
//! arrive on (`SO_INCOMING_CPU`: where the network card's receive queue is handled,
//! or on loopback where the client sent from), as receive flow steering does: the
//! kernel's receive work, the wake-up and our handling then happen on one core, with
//! no wake-up sent to another core.
//! Cached reads at 16 connections on two cores: 70-84k a second steered and pinned,
//! 50-55k handed out in turn, 57-85k steered but unpinned (DECISIONS, "One runtime
//! per core"; measured before the request line was formatted by hand, which took the
//! pinned figure to 87-94k).
//!
//! Two limits keep one core from taking everything. A runtime with no connection takes
//! the next one wherever it arrived: clients that connect all at once from one core
//! (as a load generator's threads do when they start) would otherwise leave it idle
//! (cached GETs at 4 connections: 75-92k a second, against 86-89k when the connections
//! happened to arrive on both cores and 55k when they all arrived on one). And since a
//! single receive queue would put every connection on one core, a runtime with more
//! than twice the connections of the least busy, plus 8, is passed over for the least
//! busy. Where there are fewer runtimes than usable cores (a CPU quota smaller than
//! the CPU set), nothing is pinned and connections go to the least busy runtime.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;

/// How many requests a connection serves between looks at the core its packets now
/// arrive on (a system call each).
const CHECK_EVERY: u32 = 16;

/// Looks in a row that must find a connection on the wrong runtime before it is asked
/// to reconnect, so that a client thread passing through another core moves nothing.
const STRIKES: u32 = 2;

/// Open connections per runtime, and the core each runtime is pinned to.
pub(super) struct Steering {
    shared: Arc<Shared>,
}

struct Shared {
    open: Box<[AtomicUsize]>,
    /// Empty when the runtimes are not pinned.
    cpus: Vec<usize>,
}

/// One open connection on runtime `index`; counted until dropped. It also watches
/// where the connection's packets arrive: a client thread the scheduler moves to
/// another core takes its connections' packets with it, and a connection placed by
/// where it arrived is then served from the other core, each request waking a thread
/// there. Told of each request as it arrives, it says when the connection should
/// close after answering it, so that the client reconnects, and lands, where it now
/// is.
pub(super) struct Placed {
    shared: Arc<Shared>,
    pub index: usize,
    /// The connection's socket, open for as long as the connection (which owns this).
    fd: RawFd,
    requests: AtomicU32,
    strikes: AtomicU32,
}

impl Steering {
    /// `cpus[i]` is the core runtime `i` is pinned to; empty if they are not.
    pub fn new(runtimes: usize, cpus: &[usize]) -> Self {
        Self {
            shared: Arc::new(Shared {
                open: (0..runtimes.max(1)).map(|_| AtomicUsize::new(0)).collect(),
                cpus: cpus.to_vec(),
            }),
        }
    }

    /// The runtime for `stream`.
    pub fn place(&self, stream: &TcpStream) -> Placed {
        self.place_from(incoming_cpu(stream.as_fd()), stream.as_raw_fd())
    }

    /// The runtime for a connection (socket `fd`) arriving on core `cpu`.
    fn place_from(&self, cpu: Option<usize>, fd: RawFd) -> Placed {
        let index = self.shared.choose(cpu, None);
        self.shared.open[index].fetch_add(1, Ordering::Relaxed);
        Placed {
            shared: Arc::clone(&self.shared),
            index,
            fd,
            requests: AtomicU32::new(0),
            strikes: AtomicU32::new(0),
        }
    }
}

impl Shared {
    /// The runtime for a connection arriving on core `cpu`: the one pinned there,
    /// unless another has no connection or it is far ahead of the least busy. Counts
    /// leave out one connection of runtime `leaving`, the one being placed again.
    fn choose(&self, cpu: Option<usize>, leaving: Option<usize>) -> usize {
        let count = |index: usize| {
            let open = self.open[index].load(Ordering::Relaxed);
            open.saturating_sub(usize::from(leaving == Some(index)))
        };
        let least = (0..self.open.len())
            .min_by_key(|&index| count(index))
            .unwrap_or(0);
        let pinned_there = cpu.and_then(|cpu| self.cpus.iter().position(|&pinned| pinned == cpu));
        match pinned_there {
            Some(index) if count(least) == 0 && count(index) > 0 => least,
            Some(index) if count(index) <= 2 * count(least) + 8 => index,
            _ => least,
        }
    }
}

impl Placed {
    /// Counts a request, and says whether the connection should close after it: its
    /// packets have arrived on a core whose runtime it would be placed on now, at
    /// `STRIKES` looks in a row. Only pinned runtimes are steered.
    pub fn served_one(&self) -> bool {
        self.served_one_from(|| {
            // SAFETY: the socket stays open while its connection, which owns this
            // `Placed` and calls here between its requests, is alive.
            incoming_cpu(unsafe { BorrowedFd::borrow_raw(self.fd) })
        })
    }

    fn served_one_from(&self, cpu: impl FnOnce() -> Option<usize>) -> bool {
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.shared.cpus.is_empty() || !served.is_multiple_of(CHECK_EVERY) {
            return false;
        }
        let cpu = cpu();
        if cpu.is_none() || self.shared.choose(cpu, Some(self.index)) == self.index {
            self.strikes.store(0, Ordering::Relaxed);
            return false;
        }
        self.strikes.fetch_add(1, Ordering::Relaxed) + 1 >= STRIKES
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.shared.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

fn incoming_cpu(socket: BorrowedFd<'_>) -> Option<usize> {
    socket2::SockRef::from(&socket).cpu_affinity().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_their_core_unless_a_runtime_is_idle_or_far_behind() {
        let steering = Steering::new(2, &[4, 6]);
        let on = |index: usize| steering.shared.open[index].load(Ordering::Relaxed);
        let mut placed = Vec::new();
        placed.push(steering.place_from(Some(6), -1));
        assert_eq!((on(0), on(1)), (0, 1));
        // The idle runtime takes the next, wherever it arrived; then core 6 again.
        placed.push(steering.place_from(Some(6), -1));
        assert_eq!((on(0), on(1)), (1, 1));
        placed.push(steering.place_from(Some(6), -1));
        assert_eq!((on(0), on(1)), (1, 2));
        // A core no runtime is pinned to, or none known: the least busy.
        placed.push(steering.place_from(Some(5), -1));
        placed.push(steering.place_from(None, -1));
        assert_eq!((on(0), on(1)), (3, 2));
        // Everything on core 4 from here: it takes connections up to twice core 6's
        // plus 8, then the rest are shared out.
        for _ in 0..40 {
            placed.push(steering.place_from(Some(4), -1));
        }
        assert!(on(0) <= 2 * on(1) + 9, "{} against {}", on(0), on(1));
        assert!(on(1) > 2, "core 6's runtime took none of the overflow");
        assert_eq!(on(0) + on(1), 45);
        placed.truncate(5);
        assert_eq!(on(0) + on(1), 5);
        drop(placed);
        assert_eq!((on(0), on(1)), (0, 0));
    }

    /// Whether `placed` asks to close at each of `requests` requests, its packets
    /// arriving on the core `cpu_at` gives for each look.
    fn closes(placed: &Placed, requests: u32, cpu_at: impl Fn(u32) -> usize) -> Vec<u32> {
        (1..=requests)
            .filter(|&n| placed.served_one_from(|| Some(cpu_at(n))))
            .collect()
    }

    #[test]
    fn connections_whose_packets_move_core_are_asked_to_reconnect() {
        let steering = Steering::new(2, &[4, 6]);
        // Four connections from core 4: the idle runtime takes the second.
        let placed: Vec<Placed> = (0..4).map(|_| steering.place_from(Some(4), -1)).collect();
        let indexes: Vec<usize> = placed.iter().map(|p| p.index).collect();
        assert_eq!(indexes, [0, 1, 0, 0]);
        // Its client moved to core 6: asked after two looks in a row, 16 requests apart.
        assert_eq!(closes(&placed[3], 40, |_| 6), [32]);
        // One look elsewhere between looks at home moves nothing.
        assert!(closes(&placed[2], 96, |n| if n % 32 == 16 { 6 } else { 4 }).is_empty());
        // The runtime's only connection stays, wherever its packets come from.
        assert!(closes(&placed[1], 96, |_| 4).is_empty());
        // Packets still on the core it is served on: nothing to do.
        assert!(closes(&placed[0], 96, |_| 4).is_empty());
        // Unpinned runtimes are not steered at all.
        let unpinned = Steering::new(2, &[]);
        let far = unpinned.place_from(Some(4), -1);
        assert!(closes(&far, 96, |_| 6).is_empty());
    }

    #[test]
    fn unpinned_runtimes_take_turns_by_load() {
        let steering = Steering::new(3, &[]);
        let placed: Vec<Placed> = (0..9).map(|_| steering.place_from(Some(0), -1)).collect();
        let per_runtime: Vec<usize> = (0..3)
            .map(|index| placed.iter().filter(|p| p.index == index).count())
            .collect();
        assert_eq!(per_runtime, [3, 3, 3]);
    }

    #[tokio::test]
    async fn a_loopback_connection_reports_a_core_of_this_machine() {
        use crate::cores::CpuSet;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let _client = client.unwrap();
        let cpu = incoming_cpu(accepted.unwrap().0.as_fd()).expect("SO_INCOMING_CPU is supported");
        let cpus = CpuSet::current().unwrap().cpus();
        assert!(cpus.contains(&cpu), "core {cpu} is not one of {cpus:?}");
    }
}
