//! A worker rank's life: receive the setup from the coordinator, load the assigned stage
//! (only its tensors), then compute micro-batches until told to stop. Every failure goes
//! back to the coordinator as a message, so no rank is left waiting.

use std::time::Instant;

use evalmesh_common::protocol::{check_version, ToCoordinator, ToWorker, PROTOCOL_VERSION};
use mpi::topology::Communicator;

use crate::backend::Backend;
use crate::transport::{receive, send};
use crate::{CpuBackend, LlamaStage, StageInput, StageOutput};

const COORDINATOR: i32 = 0;

#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {message}")]
pub struct NodeError {
    pub rank: i32,
    pub message: String,
}

/// Runs this worker until the coordinator sends `Shutdown`.
pub fn serve<C: Communicator>(comm: &C, default_threads: usize) -> Result<(), NodeError> {
    let rank = comm.rank();
    let fail = |message: String| {
        send(comm, COORDINATOR, &ToCoordinator::Failed { message: message.clone() });
        NodeError { rank, message }
    };
    let mut failure = None;
    let stage = match receive::<_, ToWorker>(comm, Some(COORDINATOR)).1 {
        Ok(ToWorker::Setup { version, model, stage, threads }) => {
            let threads = if threads == 0 { default_threads } else { threads };
            let started = Instant::now();
            let loaded = check_version(version)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())
                })
                .and_then(|()| crate::weights::open(std::path::Path::new(&model)).map_err(|e| e.to_string()))
                .and_then(|source| {
                    let stage =
                        LlamaStage::load(source.as_ref(), stage, CpuBackend::default()).map_err(|e| e.to_string())?;
                    Ok((stage, source.bytes_read().load(std::sync::atomic::Ordering::Relaxed)))
                });
            match loaded {
                Ok((stage, bytes_read)) => {
                    log::info!(
                        "rank {rank}: layers {:?} loaded, {bytes_read} bytes read, {threads} threads",
                        stage.spec().layers
                    );
                    let load_seconds = started.elapsed().as_secs_f64();
                    send(
                        comm,
                        COORDINATOR,
                        &ToCoordinator::Ready { version: PROTOCOL_VERSION, threads, bytes_read, load_seconds },
                    );
                    Some(stage)
                }
                Err(message) => {
                    failure = Some(fail(message));
                    None
                }
            }
        }
        Ok(ToWorker::Shutdown) => return Ok(()),
        Ok(other) => {
            failure = Some(fail(format!("expected the setup message first, got {other:?}")));
            None
        }
        Err(e) => {
            failure = Some(fail(e.to_string()));
            None
        }
    };
    loop {
        match receive::<_, ToWorker>(comm, Some(COORDINATOR)).1 {
            Ok(ToWorker::Shutdown) => return failure.map_or(Ok(()), Err),
            Ok(ToWorker::Batch { id, batch }) => {
                let Some(stage) = &stage else { continue };
                let started = Instant::now();
                let before = stage.backend().matmul_stats();
                match stage.forward(&batch, StageInput::Tokens) {
                    Ok(StageOutput::Scores(scores)) => {
                        let after = stage.backend().matmul_stats();
                        send(
                            comm,
                            COORDINATOR,
                            &ToCoordinator::Scores {
                                id,
                                scores,
                                compute_seconds: started.elapsed().as_secs_f64(),
                                matmul_flops: after.flops - before.flops,
                                matmul_seconds: after.seconds - before.seconds,
                            },
                        );
                    }
                    Ok(StageOutput::Hidden(_)) => failure = Some(fail("this stage has no head to score with".into())),
                    Err(e) => failure = Some(fail(e.to_string())),
                }
            }
            Ok(ToWorker::Setup { .. }) => failure = Some(fail("a second setup message".into())),
            Err(e) => failure = Some(fail(e.to_string())),
        }
    }
}
