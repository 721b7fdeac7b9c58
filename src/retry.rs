//! Helpers every layer that waits or retries shares: backoff with jitter, a sleep that ends
//! early on cancellation, and a mutex lock that survives poisoning.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Exponential backoff from 100 ms to 5 s with full jitter, after `failures` failures in a
/// row.
pub fn backoff_with_jitter(failures: u32) -> Duration {
    let cap_ms = (100u64 << failures.min(6)).min(5_000);
    Duration::from_millis(rand::thread_rng().gen_range(cap_ms / 2..=cap_ms))
}

/// Sleeps; returns true if cancelled first.
pub async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Locks `m`. Every critical section in ssegate leaves its data consistent, so a lock
/// poisoned by a panic elsewhere is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for failures in 0..20 {
            let d = backoff_with_jitter(failures);
            let cap = (100u64 << failures.min(6)).min(5_000);
            assert!(d >= Duration::from_millis(cap / 2) && d <= Duration::from_millis(cap));
        }
    }

    #[tokio::test]
    async fn sleep_ends_early_when_cancelled() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(sleep_or_cancel(Duration::from_secs(60), &token).await);
        assert!(!sleep_or_cancel(Duration::from_millis(1), &CancellationToken::new()).await);
    }
}
