//! Activations in flight between ranks: the memory MPI sends from or receives into
//! ([`Wire`]: host memory, pinned host memory, or device memory where the MPI is
//! CUDA-aware) with whatever keeps that memory alive and unused until MPI is done with it;
//! values leaving a stage ([`Outbound`], whose copy off the device may still be running);
//! and where values from another rank land ([`Landing`]). A backend makes all three
//! (`Transfer::send_out`, `Transfer::landing`, `Transfer::adopt`). A micro-batch's values
//! arrive as [`Activations`]: a wire with its [`ActivationHeader`] (`activations.rs` sends
//! and receives them over MPI).

use std::any::Any;

use crate::backend::error::BackendError;

/// What precedes a micro-batch's activations: its id and the shape of its `rows × cols`
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationHeader {
    pub batch: u64,
    pub rows: usize,
    pub cols: usize,
}

/// A micro-batch's activations as received: the header and the values, in a wire of the
/// landing they were received with.
pub struct Activations {
    pub header: ActivationHeader,
    pub wire: Wire,
}

/// Where a wire's values live, which says how MPI may be handed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Host memory (pageable or pinned): every MPI reads it.
    Host,
    /// Device memory: only a CUDA-aware MPI reads it.
    Device,
}

/// `len` f32 values at a fixed address that stays valid, and is touched by nothing but
/// MPI, while the wire lives.
pub struct Wire {
    address: usize,
    len: usize,
    memory: Memory,
    /// Owns the memory (and anything that must outlive MPI's use of it); dropped last.
    _owner: Box<dyn Any + Send>,
}

impl Wire {
    /// Values in a vector of the host's heap.
    pub fn host(mut values: Vec<f32>) -> Wire {
        let (address, len) = (values.as_mut_ptr() as usize, values.len());
        // Moving the vector into the box moves its header, not its values: `address` holds.
        Wire { address, len, memory: Memory::Host, _owner: Box::new(values) }
    }

    /// Values that `owner` keeps at `address`.
    ///
    /// # Safety
    /// `address` must hold `len` f32 values in `memory` for as long as `owner` lives, with
    /// no other reader or writer meanwhile (no queued device work among them).
    pub unsafe fn lent(address: usize, len: usize, memory: Memory, owner: Box<dyn Any + Send>) -> Wire {
        Wire { address, len, memory, _owner: owner }
    }

    pub fn address(&self) -> usize {
        self.address
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// The values of a wire made by [`Wire::host`], or the wire itself for any other.
    pub fn into_host_values(self) -> Result<Vec<f32>, Wire> {
        self.into_owner()
    }

    /// What owns the wire's memory, if it is a `T`; or the wire itself.
    pub fn into_owner<T: Any>(self) -> Result<T, Wire> {
        let Wire { address, len, memory, _owner: owner } = self;
        owner.downcast::<T>().map(|owner| *owner).map_err(|owner| Wire { address, len, memory, _owner: owner })
    }
}

/// A stage's `rows × cols` output on its way to another rank.
pub struct Outbound {
    pub rows: usize,
    pub cols: usize,
    ready: Box<dyn FnOnce() -> Result<Wire, BackendError> + Send>,
}

impl Outbound {
    /// Values already in place.
    pub fn now(rows: usize, cols: usize, wire: Wire) -> Outbound {
        Outbound { rows, cols, ready: Box::new(move || Ok(wire)) }
    }

    /// Values that `ready` puts in place, waiting for whatever copy fills them.
    pub fn later(
        rows: usize,
        cols: usize,
        ready: impl FnOnce() -> Result<Wire, BackendError> + Send + 'static,
    ) -> Self {
        Outbound { rows, cols, ready: Box::new(ready) }
    }

    /// Waits until the values can be sent.
    pub fn ready(self) -> Result<Wire, BackendError> {
        (self.ready)()
    }
}

/// Where activations from another rank land, for `Transfer::adopt` to take in.
pub trait Landing: Send + Sync {
    /// Memory for `len` values.
    fn take(&self, len: usize) -> Result<Wire, BackendError>;
}

/// Landing in the host's heap.
pub struct HostLanding;

impl Landing for HostLanding {
    fn take(&self, len: usize) -> Result<Wire, BackendError> {
        Ok(Wire::host(vec![0.0; len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_wire_gives_its_values_back_and_a_lent_one_does_not() {
        let wire = Wire::host(vec![1.0, 2.0, 3.0]);
        assert_eq!((wire.len(), wire.memory()), (3, Memory::Host));
        // SAFETY: the address points into the vector the wire owns.
        assert_eq!(unsafe { *(wire.address() as *const f32).add(2) }, 3.0);
        assert_eq!(wire.into_host_values().ok(), Some(vec![1.0, 2.0, 3.0]));

        let mut kept = vec![0.5f32; 4];
        let address = kept.as_mut_ptr() as usize;
        // SAFETY: the owner is a box holding the vector at `address`.
        let lent = unsafe { Wire::lent(address, 4, Memory::Host, Box::new(Box::new(kept))) };
        let back = lent.into_host_values().err().map(|w| (w.address(), w.len()));
        assert_eq!(back, Some((address, 4)));
    }
}
