//! Compiling buyers' wasm modules in the daemon without crowding the
//! seller's own work. A buyer chooses what a seller compiles, before any
//! lease starts, so compiles run one at a time (a big module takes
//! gigabytes while it compiles) and on threads at the lowest CPU priority,
//! nice 19, Cranelift's parallel workers included. On an idle machine they
//! run as fast as before.

use tokio::sync::Semaphore;

/// One compile at a time.
static TURN: Semaphore = Semaphore::const_new(1);

/// Lowest nice value.
const LOWEST: libc::c_int = 19;

/// Moves the calling thread to the lowest priority. Linux keeps a nice
/// value per thread, so the rest of the daemon is untouched.
fn lower_priority() {
    // SAFETY: setpriority reads no memory of ours; `who` 0 is the calling
    // thread. A failure (it cannot fail for lowering) leaves the priority.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOWEST) };
}

/// Makes the process-wide rayon pool, on which wasmtime compiles a module's
/// functions in parallel, start its workers at the lowest priority. Call
/// once, before the first compile.
pub(super) fn lower_worker_priority() {
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("wasm-compile-{i}"))
        .start_handler(|_| lower_priority())
        .build_global();
    if let Err(e) = built {
        tracing::warn!("wasm compile workers keep their priority: {e}");
    }
}

/// Runs `compile` on a new thread at the lowest priority, after the compile
/// before it ends.
pub(super) async fn run<T: Send + 'static>(
    compile: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let _turn = TURN.acquire().await.expect("the semaphore is never closed");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wasm-compile".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(compile());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the compile thread panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> libc::c_int {
        // SAFETY: getpriority reads no memory of ours.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test]
    async fn compiles_run_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let before = nice();
        let (during, value) = run(|| (nice(), 7)).await.unwrap();
        assert_eq!((during, value), (LOWEST, 7));
        assert_eq!(nice(), before);
    }

    #[tokio::test]
    async fn a_panicking_compile_is_an_error_and_frees_the_turn() {
        assert!(run(|| panic!("boom")).await.is_err());
        assert_eq!(run(|| 1).await.unwrap(), 1);
    }
}
