//! Retrying through outages in the engine: the one driver, [`crate::cluster::retry::Retry`],
//! with `--retry-timeout` as its budget, the engine's delays, the reconnecting state visible
//! in `cutover status`, and a give-up that is an [`EngineError::Outage`].

use std::future::Future;
use std::time::Duration;

use crate::cluster::retry::{Failure, Reconnecting, Retry, Retryable};
use crate::engine::error::EngineError;
use crate::engine::progress::Progress;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// How long cutover keeps retrying a transient failure before giving up.
    pub timeout: Duration,
}

impl Reconnecting for Progress {
    fn reconnecting(&self, what: Option<String>) {
        self.set_reconnecting(what);
    }
}

impl RetryPolicy {
    /// A fresh driver with this policy's budget, reporting to `progress`: one per loop; call
    /// [`Retry::progress`] when the loop makes progress.
    pub fn retry<'a>(&self, progress: &'a Progress) -> Retry<'a> {
        Retry::new(self.timeout)
            .with_delays(Duration::from_millis(200), Duration::from_secs(5))
            .reporting(progress)
    }

    /// After a transient failure `e` of `what`: records the reconnecting state and sleeps
    /// with backoff, or gives up (an [`EngineError::Outage`]) once the outage has lasted the
    /// budget.
    pub async fn wait(
        &self,
        retry: &mut Retry<'_>,
        what: &str,
        e: &EngineError,
    ) -> Result<(), EngineError> {
        retry.wait(what, e).await.map_err(|_| self.outage(what, e))
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
        match self.retry(progress).run(what, |_| op()).await {
            Ok(v) => Ok(v),
            Err(Failure::Permanent(e)) => Err(e),
            Err(Failure::GaveUp(e, _)) => Err(self.outage(what, &e)),
        }
    }

    fn outage(&self, what: &str, e: &EngineError) -> EngineError {
        EngineError::Outage {
            cluster: e.cluster(),
            secs: self.timeout.as_secs(),
            last: format!("{what}: {}", e.describe()),
        }
    }
}
