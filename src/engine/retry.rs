//! Retrying through outages: exponential backoff for transient errors, up to a configurable
//! limit, with the reconnecting state visible in `cutover status`.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::engine::error::EngineError;
use crate::progress::Progress;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// How long cutover keeps retrying a transient failure before giving up.
    pub timeout: Duration,
}

impl RetryPolicy {
    /// After a transient failure `e` of an outage that began at `since`: records the
    /// reconnecting state, sleeps with backoff, or gives up once the outage has lasted
    /// `timeout`.
    pub async fn wait(
        &self,
        progress: &Progress,
        what: &str,
        e: &EngineError,
        since: Instant,
        attempt: u32,
    ) -> Result<(), EngineError> {
        let (cluster, last) = match e {
            EngineError::Cluster {
                cluster, detail, ..
            } => (*cluster, detail.clone()),
            other => ("source", other.to_string()),
        };
        if since.elapsed() >= self.timeout {
            progress.set_reconnecting(None);
            return Err(EngineError::Outage {
                cluster,
                secs: self.timeout.as_secs(),
                last,
            });
        }
        progress.set_reconnecting(Some(format!(
            "{what}: {cluster} cluster unavailable for {}s (attempt {attempt}): {last}",
            since.elapsed().as_secs()
        )));
        tracing::warn!(what, cluster, attempt, error = %last, "Transient failure; retrying.");
        let delay = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)))
            .min(Duration::from_secs(5));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or transient failures
    /// have lasted `timeout`.
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
        let mut outage: Option<Instant> = None;
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => {
                    if outage.is_some() {
                        tracing::info!(what, attempts = attempt + 1, "Reconnected.");
                        progress.set_reconnecting(None);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    let since = *outage.get_or_insert_with(Instant::now);
                    attempt += 1;
                    self.wait(progress, what, &e, since, attempt).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
