//! Retrying through outages: [`crate::cluster::server_error::Backoff`] for transient errors, up to a
//! configurable limit, with the reconnecting state visible in `cutover status`.

use std::future::Future;
use std::time::Duration;

use crate::cluster::server_error::{Backoff, Retryable};
use crate::engine::error::EngineError;
use crate::engine::progress::Progress;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// How long cutover keeps retrying a transient failure before giving up.
    pub timeout: Duration,
}

impl RetryPolicy {
    /// A fresh backoff with this policy's budget: one per loop; call
    /// [`Backoff::progress`] when the loop makes progress.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.timeout).with_delays(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// After a transient failure `e` of `what`: records the reconnecting state and sleeps
    /// with backoff, or gives up (an [`EngineError::Outage`]) once the outage has lasted the
    /// budget.
    pub async fn wait(
        &self,
        progress: &Progress,
        what: &str,
        e: &EngineError,
        backoff: &mut Backoff,
    ) -> Result<(), EngineError> {
        let cluster = e.cluster();
        let name = crate::base::role::role_name(cluster);
        let last = e.describe();
        let Some(delay) = backoff.next_delay() else {
            progress.set_reconnecting(None);
            tracing::warn!(what, cluster = name, attempts = backoff.attempts(), error = %last, "Giving up.");
            return Err(EngineError::Outage {
                cluster,
                secs: self.timeout.as_secs(),
                last: format!("{what}: {last}"),
            });
        };
        progress.set_reconnecting(Some(format!(
            "{what}: {name} cluster unavailable for {}s (attempt {}): {last}",
            backoff.outage().unwrap_or_default().as_secs(),
            backoff.attempts()
        )));
        tracing::warn!(what, cluster = name, attempt = backoff.attempts(), error = %last, "Transient failure; retrying.");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or transient failures
    /// have lasted `timeout`. `op` must be idempotent.
    pub async fn run<T, F, Fut>(
        &self,
        progress: &Progress,
        what: &str,
        mut op: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let mut backoff = self.backoff();
        loop {
            match op().await {
                Ok(v) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(what, attempts = backoff.attempts() + 1, "Reconnected.");
                        progress.set_reconnecting(None);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    self.wait(progress, what, &e, &mut backoff).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
