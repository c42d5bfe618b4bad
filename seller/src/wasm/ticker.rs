//! The one background thread that advances the engine's epoch, which makes
//! every running guest look at its clock (see [`super::clock`]).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::Engine;

/// How often running guests check their budgets; limits are enforced to
/// within about this much.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Owns the ticker thread; dropping it stops and joins the thread.
pub(crate) struct EpochTicker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts incrementing `engine`'s epoch every [`TICK`].
    pub(crate) fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                super::thread_hook::on_helper_thread_start();
                loop {
                    match stopped.recv_timeout(TICK) {
                        Err(RecvTimeoutError::Timeout) => engine.increment_epoch(),
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
