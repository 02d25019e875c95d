//! The refresh loop: one task per organization, fetching, parsing and
//! publishing a new snapshot.
//!
//! Each organization has its own task, so a slow organization never delays
//! another, and at most one request per organization is in flight. A good
//! refresh replaces the snapshot whole; a failed one leaves it, counts the
//! reason, and schedules the next attempt with exponential backoff and full
//! jitter, from one second up to the refresh interval, and never before a
//! `Retry-After` Scout sent. Every failure is logged once, with the
//! organization and the reason, at the moment it is counted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::instruments::Instruments;
use crate::parse::{Limits, parse};
use crate::scout::{FetchError, Reason, ScoutClient};
use crate::secret::TokenSource;
use crate::snapshot::{Snapshot, Store};

/// The first backoff step after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);

/// Refreshes one organization.
#[derive(Debug)]
pub struct Refresher {
    /// Position of the organization in the store.
    pub index: usize,
    /// The organization.
    pub org: String,
    /// Its token.
    pub token: TokenSource,
    /// The shared client.
    pub client: ScoutClient,
    /// Where snapshots go.
    pub store: Arc<Store>,
    /// Where refresh durations go; `None` for `check`.
    pub instruments: Option<Arc<Instruments>>,
    /// Time between good refreshes.
    pub interval: Duration,
    /// Parser bounds.
    pub limits: Limits,
    /// Age at which the data stops being served.
    pub max_staleness: Duration,
    /// Most series one family keeps; the rest are left out and logged.
    pub max_series_per_metric: usize,
}

/// What a successful refresh produced, for `check` and the logs.
#[derive(Debug)]
pub struct Refreshed {
    /// The snapshot now served.
    pub snapshot: Arc<Snapshot>,
    /// Payload size in bytes.
    pub bytes: usize,
    /// Fetch and parse time.
    pub elapsed: Duration,
}

impl Refresher {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        let mut stale_reported = false;
        loop {
            let wait = match self.refresh_once().await {
                Ok(_) => {
                    failures = 0;
                    stale_reported = false;
                    self.interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = backoff(failures, self.interval, fastrand::f64());
                    let wait = error.retry_after.map_or(backoff, |r| r.max(backoff));
                    tracing::warn!(
                        org = %self.org,
                        reason = %error.reason,
                        error = %error.detail,
                        retry_in = %humantime::format_duration(round_ms(wait)),
                        hint = error.reason.hint(),
                        "refresh failed; the last good data is still served"
                    );
                    if !stale_reported && self.is_stale() {
                        stale_reported = true;
                        tracing::error!(
                            org = %self.org,
                            max_staleness = %humantime::format_duration(self.max_staleness),
                            "data is older than --max-staleness; its Scout series are withdrawn until \
                             the next good refresh"
                        );
                    }
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    fn is_stale(&self) -> bool {
        self.store
            .org(self.index)
            .snapshot()
            .is_some_and(|s| s.age(SystemTime::now()) > self.max_staleness)
    }

    /// One attempt: fetch, parse, publish or count the failure.
    pub async fn refresh_once(&self) -> Result<Refreshed, FetchError> {
        let started = Instant::now();
        let result = self.fetch_and_build().await;
        let elapsed = started.elapsed();
        let org = self.store.org(self.index);
        if let Some(instruments) = &self.instruments {
            instruments.record_refresh(org.org_attribute(), elapsed);
        }
        match result {
            Ok((snapshot, bytes, fetched_in)) => {
                self.report_skipped(&snapshot);
                let fitting = Instant::now();
                if let Some(instruments) = &self.instruments {
                    instruments.ensure_families(&snapshot);
                    instruments.fit_shards(&self.org, snapshot.series_count());
                }
                let series = snapshot.series_count();
                self.store.publish(self.index, snapshot);
                tracing::debug!(
                    org = %self.org,
                    series,
                    bytes,
                    fetch_ms = fetched_in.as_secs_f64() * 1e3,
                    build_ms = (elapsed - fetched_in).as_secs_f64() * 1e3,
                    publish_ms = fitting.elapsed().as_secs_f64() * 1e3,
                    "refreshed"
                );
                let snapshot = org.snapshot().expect("just published");
                Ok(Refreshed { snapshot, bytes, elapsed })
            }
            Err(error) => {
                self.store.record_failure(self.index, error.reason, &error.detail);
                if error.reason == Reason::Unauthorized {
                    self.token.invalidate();
                }
                Err(error)
            }
        }
    }

    /// Fetches and parses: the snapshot, the payload's size and the time
    /// the fetch took.
    async fn fetch_and_build(&self) -> Result<(Snapshot, usize, Duration), FetchError> {
        let started = Instant::now();
        let token = self
            .token
            .current()
            .map_err(|e| FetchError::new(Reason::Unauthorized, e.to_string()))?;
        let fetched = self.client.fetch(&self.org, &token).await?;
        let fetched_in = started.elapsed();
        let fetched_at = SystemTime::now();
        let (org, limits) = (self.org.clone(), self.limits.clone());
        let max_series = self.max_series_per_metric;
        tokio::task::spawn_blocking(move || {
            let exposition = parse(&fetched.body, fetched.format, &limits)
                .map_err(|e| FetchError::new(Reason::InvalidPayload, e.to_string()))?;
            let bytes = fetched.body.len();
            drop(fetched);
            let mut snapshot = Snapshot::build(&org, exposition, fetched_at);
            snapshot.keep_at_most(max_series);
            // Handing freed pages back takes a few milliseconds at 100,000
            // series; the snapshot need not wait for it.
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
            Ok((snapshot, bytes, fetched_in))
        })
        .await
        .unwrap_or_else(|e| {
            Err(FetchError::new(Reason::InvalidPayload, format!("parser task failed: {e}")))
        })
    }

    fn report_skipped(&self, snapshot: &Snapshot) {
        let s = &snapshot.skipped;
        if s.non_finite > 0 {
            tracing::warn!(org = %self.org, series = s.non_finite, "series with NaN or infinite values are not exported");
        }
        if s.duplicates > 0 {
            tracing::warn!(org = %self.org, series = s.duplicates, "repeated series in Scout's payload; the first of each counts");
        }
        if !s.unsupported_families.is_empty() {
            tracing::warn!(
                org = %self.org,
                families = %s.unsupported_families.join(", "),
                "only gauge and untyped families are passed through"
            );
        }
        for (family, cut) in &s.over_limit {
            tracing::error!(
                org = %self.org,
                metric = %family,
                left_out = cut,
                limit = self.max_series_per_metric,
                "more series than --max-series-per-metric allows; the rest are left out"
            );
        }
        if s.foreign_families > 0 {
            tracing::warn!(
                org = %self.org,
                families = s.foreign_families,
                "families outside the scout_ namespace are left out"
            );
        }
        if !s.reserved_families.is_empty() {
            tracing::warn!(
                org = %self.org,
                families = %s.reserved_families.join(", "),
                "Scout families named like the exporter's own metrics are left out"
            );
        }
    }
}

/// The wait before retry number `failures`: full jitter over an exponential
/// ceiling that starts at [`BACKOFF_BASE`] and stops at `cap`, never less
/// than one second (or `cap`, if that is shorter). `unit` is a random
/// number in `[0, 1)`.
pub fn backoff(failures: u32, cap: Duration, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << exp).min(cap);
    let floor = Duration::from_secs(1).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0)).max(floor)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_interval_and_jitters_below_it() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(2, cap, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(5, cap, 1.0), Duration::from_secs(32));
        assert_eq!(backoff(20, cap, 1.0), cap);
        assert_eq!(backoff(20, cap, 0.5), Duration::from_secs(150));
        assert_eq!(backoff(3, cap, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX, cap, 0.99), cap.mul_f64(0.99));
    }

    #[test]
    fn backoff_never_exceeds_a_short_interval() {
        let cap = Duration::from_millis(100);
        for failures in 1..10 {
            for unit in [0.0, 0.3, 0.999] {
                assert!(backoff(failures, cap, unit) <= cap);
            }
        }
    }
}
