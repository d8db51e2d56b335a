//! Scheduled promotions: each policy with a `schedule` requests a promotion at every firing of
//! its cron line, in its time zone, and never fires the same slot twice.
//!
//! Every slot is keyed by (environment, cron line, time zone, scheduled instant) in the store's
//! marks. The key is written before the promotion is requested (intent before the side
//! effect); the run carries the key in its origin, so after a crash between the two the next
//! tick finds out whether the request was made and completes or repeats it, never both. A
//! cursor per schedule records up to which instant slots were handled; a schedule seen for the
//! first time starts at "now" and never fires for the past. Slots the daemon missed (it was
//! down longer than `starting_deadline`) follow `misfire`: `skip` records them as missed,
//! `run_once` fires the newest of them once. The timing rules, daylight-saving changes
//! included, are in [`timing`].

pub mod timing;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::error::{Error, Result};
use crate::policy::{window_verdict, ClosedWindowRule, Policy, ScheduleRule, WindowVerdict};
use crate::promote::engine::{Engine, PromotionRequest};
use crate::store::{Origin, RunKind};

use timing::{due, Clock};

/// The actor the audit log names for what a schedule does.
pub const SCHEDULE_ACTOR: &str = "schedule";

const CURSOR_PREFIX: &str = "schedule/cursor/";
const FIRING_PREFIX: &str = "schedule/firing/";

/// Fires the schedules of the loaded policies against a clock.
pub struct Scheduler {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
}

/// What one tick did for one schedule, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A promotion was requested for this slot.
    Fired {
        /// The slot.
        slot: DateTime<Utc>,
        /// The run it created for the scheduled environment.
        run_id: String,
    },
    /// The slot was handled already (a restart within the same slot).
    AlreadyHandled {
        /// The slot.
        slot: DateTime<Utc>,
    },
    /// The slot fired but nothing was requested: already on the release, nothing upstream, a
    /// closed window with `on_closed_window = "drop"`.
    Skipped {
        /// The slot.
        slot: DateTime<Utc>,
        /// Why.
        reason: String,
    },
    /// Slots that will not fire because the daemon missed them.
    Missed {
        /// How many.
        count: usize,
    },
}

/// The identity of a schedule: a changed cron line or zone is a new schedule with its own
/// cursor, so editing a schedule never replays the old one's slots.
pub fn schedule_id(environment: &str, rule: &ScheduleRule) -> String {
    format!(
        "{environment}|{}|{}",
        rule.cron.expression,
        rule.cron.timezone.name()
    )
}

/// The key of one slot of one schedule.
pub fn firing_key(environment: &str, rule: &ScheduleRule, slot: DateTime<Utc>) -> String {
    format!(
        "{}|{}",
        schedule_id(environment, rule),
        slot.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

fn parse_instant(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    value
        .get("at")
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}

impl Scheduler {
    /// A scheduler for the engine's policies (re-read on every tick, so a reload takes effect).
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>) -> Scheduler {
        Scheduler { engine, clock }
    }

    /// Handles every slot due now, for every schedule. One failing schedule does not stop the
    /// others; its error is logged and recorded.
    pub async fn tick(&self) -> Vec<(String, Outcome)> {
        let now = self.clock.now();
        let loaded = self.engine.loaded();
        let mut outcomes = Vec::new();
        for policy in loaded.policies.iter() {
            let Some(rule) = &policy.schedule else {
                continue;
            };
            match self.tick_one(policy, rule, now).await {
                Ok(list) => {
                    outcomes.extend(list.into_iter().map(|o| (policy.environment.clone(), o)))
                }
                Err(err) => {
                    tracing::warn!(environment = %policy.environment, error = %err, "schedule tick failed");
                }
            }
        }
        outcomes
    }

    async fn tick_one(
        &self,
        policy: &Policy,
        rule: &ScheduleRule,
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>> {
        let env = &policy.environment;
        let store = self.engine.store();
        let cursor_key = format!("{CURSOR_PREFIX}{}", schedule_id(env, rule));
        let Some(cursor) = store.mark(&cursor_key)?.as_ref().and_then(parse_instant) else {
            store.put_mark(&cursor_key, &json!({"at": now.to_rfc3339()}))?;
            let next = rule.cron.next_firings(now, 1);
            self.engine.event(
                SCHEDULE_ACTOR,
                "schedule.armed",
                env,
                None,
                None,
                json!({"cron": rule.cron.expression, "timezone": rule.cron.timezone.name(), "next": next.first()}),
            )?;
            return Ok(Vec::new());
        };
        let due = due(
            &rule.cron,
            rule.misfire,
            rule.starting_deadline,
            cursor,
            now,
        );
        let mut outcomes = Vec::new();
        if due.missed_count > 0 {
            self.engine.event(
                SCHEDULE_ACTOR,
                "schedule.missed",
                env,
                None,
                Some(&format!(
                    "{} slot(s) passed while sluice was not running (or more than starting_deadline {} late); misfire = \"{}\"",
                    due.missed_count,
                    crate::policy::format_duration(rule.starting_deadline),
                    rule.misfire.as_str()
                )),
                json!({"count": due.missed_count, "newest": due.missed, "fired_instead": due.fire}),
            )?;
            outcomes.push(Outcome::Missed {
                count: due.missed_count,
            });
        }
        if let Some(slot) = due.fire {
            outcomes.push(self.fire(policy, rule, slot, due.late, now).await?);
        }
        // Only a tick that handled slots moves the cursor: between slots there is nothing to
        // record, and a flushed write every tick per schedule would be all cost.
        if !outcomes.is_empty() {
            store.put_mark(&cursor_key, &json!({"at": now.to_rfc3339()}))?;
        }
        Ok(outcomes)
    }

    async fn fire(
        &self,
        policy: &Policy,
        rule: &ScheduleRule,
        slot: DateTime<Utc>,
        late: bool,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let env = &policy.environment;
        let store = self.engine.store();
        let key = firing_key(env, rule, slot);
        let mark_key = format!("{FIRING_PREFIX}{key}");
        let claimed = store.insert_mark(
            &mark_key,
            &json!({"state": "claimed", "at": now.to_rfc3339()}),
        )?;
        if !claimed {
            let mark = store.mark(&mark_key)?.unwrap_or_default();
            if mark.get("state").and_then(|s| s.as_str()) != Some("claimed") {
                return Ok(Outcome::AlreadyHandled { slot });
            }
            if let Some(run) = self.engine.store().runs()?.into_iter().find(|r| {
                r.kind == RunKind::Promotion
                    && r.environment == *env
                    && matches!(&r.origin, Some(Origin::Schedule { firing, .. }) if *firing == key)
            }) {
                store.put_mark(
                    &mark_key,
                    &json!({"state": "fired", "run_id": run.id, "at": now.to_rfc3339()}),
                )?;
                return Ok(Outcome::AlreadyHandled { slot });
            }
        }
        let slot_text = slot.to_rfc3339_opts(SecondsFormat::Secs, true);
        let window = window_verdict(&policy.windows, now);
        if let (WindowVerdict::Closed { reason, .. }, ClosedWindowRule::Drop) =
            (&window, rule.on_closed_window)
        {
            let reason = format!("window: {reason} (on_closed_window = \"drop\")");
            return self.skip(env, &mark_key, slot, "schedule.dropped", reason, now);
        }
        let release = match self.release_to_promote(policy)? {
            Ok(release) => release,
            Err(reason) => return self.skip(env, &mark_key, slot, "schedule.skipped", reason, now),
        };
        let request = PromotionRequest {
            to: env.clone(),
            release: Some(release),
            ladder: false,
            actor: SCHEDULE_ACTOR.into(),
            reason: Some(format!(
                "schedule `{}` ({}) slot {slot_text}{}",
                rule.cron.expression,
                rule.cron.timezone.name(),
                if late {
                    ", fired late (misfire = \"run_once\")"
                } else {
                    ""
                }
            )),
            origin: Some(Origin::Schedule {
                firing: key.clone(),
                slot,
            }),
        };
        match self.engine.request_promotion(&request).await {
            Ok(runs) => {
                let run_id = runs
                    .iter()
                    .find(|r| r.environment == *env)
                    .map(|r| r.id.clone())
                    .unwrap_or_default();
                store.put_mark(
                    &mark_key,
                    &json!({"state": "fired", "run_id": run_id, "at": now.to_rfc3339()}),
                )?;
                let waiting_for_window = match window {
                    WindowVerdict::Closed { reason, .. } => Some(reason),
                    WindowVerdict::Open => None,
                };
                self.engine.event(
                    SCHEDULE_ACTOR,
                    "schedule.fired",
                    env,
                    Some(&run_id),
                    waiting_for_window
                        .as_ref()
                        .map(|w| format!("the run waits: window {w} (on_closed_window = \"wait\")"))
                        .as_deref(),
                    json!({"slot": slot_text, "late": late, "cron": rule.cron.expression, "timezone": rule.cron.timezone.name(), "window_closed": waiting_for_window}),
                )?;
                tracing::info!(environment = %env, slot = %slot_text, run = %run_id, "schedule fired");
                Ok(Outcome::Fired { slot, run_id })
            }
            Err(Error::Conflict(reason)) | Err(Error::NotFound(reason)) => {
                self.skip(env, &mark_key, slot, "schedule.skipped", reason, now)
            }
            Err(err) => {
                store.put_mark(
                    &mark_key,
                    &json!({"state": "failed", "error": err.to_string(), "at": now.to_rfc3339()}),
                )?;
                self.engine.event(
                    SCHEDULE_ACTOR,
                    "schedule.failed",
                    env,
                    None,
                    Some(&err.to_string()),
                    json!({"slot": slot_text}),
                )?;
                Err(err)
            }
        }
    }

    fn skip(
        &self,
        env: &str,
        mark_key: &str,
        slot: DateTime<Utc>,
        action: &str,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let slot_text = slot.to_rfc3339_opts(SecondsFormat::Secs, true);
        self.engine.store().put_mark(
            mark_key,
            &json!({"state": action.trim_start_matches("schedule."), "reason": reason, "at": now.to_rfc3339()}),
        )?;
        self.engine.event(
            SCHEDULE_ACTOR,
            action,
            env,
            None,
            Some(&reason),
            json!({"slot": slot_text}),
        )?;
        tracing::info!(environment = %env, slot = %slot_text, reason = %reason, "{action}");
        Ok(Outcome::Skipped { slot, reason })
    }

    /// The release a firing brings: what the upstream environment is on (a scheduled prod
    /// promotion takes what staging has), or the newest release for an entry point.
    fn release_to_promote(&self, policy: &Policy) -> Result<std::result::Result<String, String>> {
        let store = self.engine.store();
        match &policy.from {
            Some(from) => Ok(store.environment_state(from)?.release.ok_or_else(|| {
                format!("nothing to promote: `{from}` has no release from sluice yet")
            })),
            None => Ok(store
                .head_release()?
                .ok_or_else(|| "nothing to promote: no release recorded yet".to_string())),
        }
    }

    /// Ticks on the engine's tick until the engine stops.
    pub async fn run(self) {
        let this = &self;
        self.engine
            .each_tick("scheduler", move || async move {
                this.tick().await;
            })
            .await;
    }
}

/// One line per schedule with its next firings, for `sluice schedules`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleView {
    /// The environment it promotes to.
    pub environment: String,
    /// The rule as configured.
    pub rule: ScheduleRule,
    /// The next firings, in the schedule's zone.
    pub next: Vec<DateTime<chrono_tz::Tz>>,
}

/// The next `count` firings of every schedule after `after`, in each schedule's time zone.
pub fn upcoming(
    policies: &crate::policy::Policies,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<ScheduleView> {
    policies
        .iter()
        .filter_map(|policy| {
            let rule = policy.schedule.as_ref()?;
            let next = rule
                .cron
                .next_firings(after, count)
                .into_iter()
                .map(|at| at.with_timezone(&rule.cron.timezone))
                .collect();
            Some(ScheduleView {
                environment: policy.environment.clone(),
                rule: rule.clone(),
                next,
            })
        })
        .collect()
}
