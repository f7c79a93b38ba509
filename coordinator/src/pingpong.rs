//! `evalmesh pingpong`: measures the activation path between ranks 0 and 1 (header and
//! raw f32 buffer, received by polling with back-off, as pipeline stages pass hidden
//! states) beside a raw MPI ping-pong of the same bytes (blocking send and receive), at
//! each message size, so that the cost of the activation protocol shows as a ratio.

use std::time::Instant;

use evalmesh_worker::comm::{
    send_activations, set_polling, try_receive_activations, ActivationHeader, Backoff, HostLanding, Polling, Wire,
};
use evalmesh_worker::Matrix;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};

/// The tag of the raw ping-pong, apart from the engine's tags.
const RAW_TAG: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum PingPongError {
    #[error("pingpong needs 2 ranks (mpirun -np 2 evalmesh pingpong), not {0}")]
    Ranks(i32),
    #[error("rank 1 returned a bad activation message: {0}")]
    Message(String),
}

/// One message size's figures: bytes per message and each path's throughput (GB/s,
/// counting both directions of every round trip).
pub struct Measurement {
    pub bytes: usize,
    pub raw_gb_per_s: f64,
    pub activation_gb_per_s: f64,
}

/// Runs both ping-pongs for matrices of `rows × width` f32 for each of `rows`, `round_trips`
/// times each after a warm-up, alternating the two paths `trials` times and keeping each
/// path's best trial. Every rank calls it: ranks 0 and 1 measure and both get the
/// figures, any other rank returns at once with none.
pub fn measure(
    world: &SimpleCommunicator,
    rows: &[usize],
    width: usize,
    round_trips: usize,
    trials: usize,
) -> Result<Vec<Measurement>, PingPongError> {
    if world.size() < 2 {
        return Err(PingPongError::Ranks(world.size()));
    }
    if world.rank() > 1 {
        return Ok(Vec::new());
    }
    let peer: Rank = 1 - world.rank();
    // Nothing else runs: the receivers may poll without sleeping, like ranks with cores to spare.
    set_polling(Polling { spare_core: true, own_cores: true });
    let mut results = Vec::new();
    for &r in rows {
        let m = Matrix::from_vec(r, width, (0..r * width).map(|i| i as f32).collect());
        let (mut raw, mut activation) = (f64::INFINITY, f64::INFINITY);
        raw_round_trips(world, peer, &m, 2);
        activation_round_trips(world, peer, &m, 2)?;
        for _ in 0..trials {
            raw = raw.min(raw_round_trips(world, peer, &m, round_trips));
            activation = activation.min(activation_round_trips(world, peer, &m, round_trips)?);
        }
        let bytes = m.data.len() * 4;
        let gb_per_s = |seconds: f64| (2 * bytes * round_trips) as f64 / seconds / 1e9;
        results.push(Measurement { bytes, raw_gb_per_s: gb_per_s(raw), activation_gb_per_s: gb_per_s(activation) });
    }
    Ok(results)
}

/// Seconds for `n` round trips of blocking MPI send and receive.
fn raw_round_trips(world: &SimpleCommunicator, peer: Rank, m: &Matrix, n: usize) -> f64 {
    let other = world.process_at_rank(peer);
    let mut buffer = vec![0.0f32; m.data.len()];
    let started = Instant::now();
    for _ in 0..n {
        if world.rank() == 0 {
            other.send_with_tag(&m.data[..], RAW_TAG);
            other.receive_into_with_tag(&mut buffer[..], RAW_TAG);
        } else {
            other.receive_into_with_tag(&mut buffer[..], RAW_TAG);
            other.send_with_tag(&buffer[..], RAW_TAG);
        }
    }
    started.elapsed().as_secs_f64()
}

/// Seconds for `n` round trips of the engine's activation messages (landing on the host,
/// as the CPU backend's do).
fn activation_round_trips(world: &SimpleCommunicator, peer: Rank, m: &Matrix, n: usize) -> Result<f64, PingPongError> {
    let receive = || -> Result<Wire, PingPongError> {
        let mut backoff = Backoff::default();
        loop {
            match try_receive_activations(world, peer, &HostLanding) {
                Some(received) => return received.map(|activations| activations.wire).map_err(PingPongError::Message),
                None => backoff.wait(),
            }
        }
    };
    let mut wire = Wire::host(m.data.clone());
    let started = Instant::now();
    for batch in 0..n as u64 {
        let header = ActivationHeader { batch, rows: m.rows, cols: m.cols };
        if world.rank() == 0 {
            send_activations(world, peer, header, &wire);
            wire = receive()?;
        } else {
            wire = receive()?;
            send_activations(world, peer, header, &wire);
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
