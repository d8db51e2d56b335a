//! The periodic drift scan: at each firing of an environment's `drift_scan` schedule the
//! daemon compares the environment with the expected schema of what it has applied, records
//! the result in the store and the event log, and announces it when it differs from the last
//! scan's (new drift, changed drift, drift gone). Missed firings are not caught up: a scan
//! says how things are now, so one scan after an outage is all that is useful.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::Result;
use crate::promote::engine::{Engine, MACHINE_ACTOR};
use crate::schedule::timing::Clock;

/// What the store keeps of an environment's last scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Differences found (zero when clean).
    pub differences: usize,
    /// Fingerprint of the differences, to tell a change.
    pub fingerprint: String,
    /// The check failed (and why); nothing is compared then.
    pub error: Option<String>,
}

fn cursor_key(environment: &str) -> String {
    format!("drift/scan/cursor/{environment}")
}

/// The store key of an environment's last scan.
pub fn last_key(environment: &str) -> String {
    format!("drift/scan/last/{environment}")
}

/// Runs the scans of every environment whose policy has a `drift_scan`.
pub struct DriftScanner {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
}

impl DriftScanner {
    /// A scanner on `engine`'s environments and policies, on `clock`'s time.
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>) -> DriftScanner {
        DriftScanner { engine, clock }
    }

    /// Scans every environment whose schedule fired since its last look; returns the names
    /// scanned. An environment a run holds is looked at again next tick (its schema is moving).
    pub async fn tick(&self) -> Vec<String> {
        let loaded = self.engine.loaded();
        let now = self.clock.now();
        let mut scanned = Vec::new();
        for name in loaded.environment_names() {
            let Some(scan) = loaded.policies.for_env(&name).drift_scan else {
                continue;
            };
            let store = self.engine.store();
            let cursor = match store.mark(&cursor_key(&name)) {
                Ok(Some(value)) => serde_json::from_value::<DateTime<Utc>>(value).ok(),
                Ok(None) => None,
                Err(err) => {
                    tracing::warn!(environment = %name, error = %err, "drift scan: cannot read its cursor");
                    continue;
                }
            };
            let Some(cursor) = cursor else {
                // First sight of this schedule: scans start from now.
                let _ = store.put_mark(&cursor_key(&name), &json!(now));
                continue;
            };
            let due = scan
                .cron
                .firings_after(cursor)
                .next()
                .is_some_and(|f| f <= now);
            if !due || self.engine.is_driving(&name) {
                continue;
            }
            if let Err(err) = store.put_mark(&cursor_key(&name), &json!(now)) {
                tracing::warn!(environment = %name, error = %err, "drift scan: cannot move its cursor");
                continue;
            }
            if let Err(err) = self.scan(&name, now).await {
                tracing::warn!(environment = %name, error = %err, "drift scan could not be recorded");
            }
            scanned.push(name);
        }
        scanned
    }

    /// Scans one environment now and records the result.
    async fn scan(&self, environment: &str, now: DateTime<Utc>) -> Result<()> {
        let store = self.engine.store();
        let previous = store
            .mark(&last_key(environment))?
            .and_then(|v| serde_json::from_value::<ScanRecord>(v).ok());
        let outcome = self.engine.check_drift(environment).await;
        let record = match &outcome {
            Ok(report) => ScanRecord {
                at: now,
                differences: report.differences.len(),
                fingerprint: report.fingerprint(),
                error: None,
            },
            Err(err) => ScanRecord {
                at: now,
                differences: 0,
                fingerprint: String::new(),
                error: Some(err.to_string()),
            },
        };
        store.put_mark(&last_key(environment), &json!(record))?;
        let report = match outcome {
            Ok(report) => report,
            Err(err) => {
                self.engine.event(
                    MACHINE_ACTOR,
                    "drift.scan_failed",
                    environment,
                    None,
                    Some(&err.to_string()),
                    json!({}),
                )?;
                return Ok(());
            }
        };
        let was_dirty = previous
            .as_ref()
            .is_some_and(|p| p.error.is_none() && p.differences > 0);
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.error.is_some() || p.fingerprint != record.fingerprint);
        self.engine.event(
            MACHINE_ACTOR,
            "drift.scanned",
            environment,
            None,
            Some(&report.summary()),
            json!({
                "differences": report.differences.len(),
                "fingerprint": record.fingerprint,
                "changed": changed,
                "diff": report.human(),
            }),
        )?;
        let event = if !report.is_clean() && changed {
            Some("drift.detected")
        } else if report.is_clean() && was_dirty {
            Some("drift.resolved")
        } else {
            None
        };
        if let Some(event) = event {
            self.engine.report_drift(event, None, &report, json!({}))?;
        }
        Ok(())
    }

    /// Ticks on the engine's tick until the engine stops.
    pub async fn run(self) {
        let this = &self;
        self.engine
            .each_tick("drift scanner", move || async move {
                this.tick().await;
            })
            .await;
    }
}
