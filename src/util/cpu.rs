//! Ground floor: CPU work goes to rayon, never onto the async runtime's threads.

use anyhow::{anyhow, Result};

/// Runs `f` on the rayon pool and awaits its result without blocking the runtime.
pub async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| anyhow!("worker thread panicked"))
}
