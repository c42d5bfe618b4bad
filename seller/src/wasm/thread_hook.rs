//! A hook every helper thread of the runtime (epoch ticker, output
//! forwarder) runs first, so a confined sandbox can put each thread under
//! the seccomp filter of its role before the thread does anything else.

use std::sync::OnceLock;

static HELPER_START: OnceLock<fn()> = OnceLock::new();

/// Sets the function helper threads run when they start; only the first
/// call counts (a process has one confinement).
pub fn set_helper_thread_hook(hook: fn()) {
    let _ = HELPER_START.set(hook);
}

/// Runs the hook, if one is set; called first thing on each helper thread.
pub(crate) fn on_helper_thread_start() {
    if let Some(hook) = HELPER_START.get() {
        hook();
    }
}
