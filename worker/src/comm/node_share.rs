//! This rank's node ([`NodeShare`]): its cores and the workers that share them, which set
//! a worker's threads, its GPU and how its waits poll.

use mpi::topology::{Communicator, Rank};
use mpi::traits::CommunicatorCollectives;

use super::polling::Polling;

/// This rank's node: its cores, the workers that share them (rank 0 coordinates and
/// mostly sleeps, so it does not count) and this rank's place among them (which picks its
/// GPU). Collective: every rank calls it.
#[derive(Debug, Clone, Copy)]
pub struct NodeShare {
    pub cores: usize,
    pub workers: usize,
    /// This rank's place among the node's workers, in rank order.
    pub index: usize,
}

impl NodeShare {
    pub fn of<C: Communicator>(world: &C) -> Self {
        let node = world.split_shared(world.rank());
        let mut ranks = vec![0 as Rank; node.size() as usize];
        node.all_gather_into(&world.rank(), &mut ranks[..]);
        ranks.retain(|&r| r != 0);
        ranks.sort_unstable();
        let index = ranks.iter().position(|&r| r == world.rank()).unwrap_or(0);
        NodeShare {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            workers: ranks.len().max(1),
            index,
        }
    }

    /// Compute threads per worker when the setup leaves it open: the cores shared out.
    pub fn threads(&self) -> usize {
        (self.cores / self.workers).max(1)
    }

    /// How waits poll once every worker runs `threads` compute threads: whether a core is
    /// left over, and whether every thread has a core of its own.
    pub fn polling(&self, threads: usize) -> Polling {
        let busy = self.workers * threads;
        Polling { spare_core: self.cores > busy, own_cores: self.cores >= busy }
    }
}
