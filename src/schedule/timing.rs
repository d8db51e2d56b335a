//! When a scheduled promotion is due: cron firings in a policy's time zone, and what to do
//! about the ones that passed while the daemon was not looking.
//!
//! Pure logic: nothing here reads the clock, a store or the network. The caller passes the
//! instants (through a [`Clock`] in the daemon, fixed dates in tests), so every rule below can be
//! tested at any date.
//!
//! # Daylight saving
//!
//! The cron crate searches by wall-clock time, which around a change either skips a firing or
//! fires twice. [`CronSchedule`] defines its own rule instead: every matching wall-clock time
//! fires once. A time that occurs twice (fall back) fires at its first occurrence only; a time
//! that does not exist (spring forward) fires at the end of the gap, the first instant after the
//! jump (03:00 CEST for a 02:30 schedule in Europe/Berlin), and several such times, or one
//! already at the gap end, collapse into that single instant.
//!
//! # What is due
//!
//! [`due`] looks at the slots (firings) in `(cursor, now]`, `cursor` being the newest slot
//! already handled. A slot is *on time* if `now - slot <= starting_deadline`; older ones are
//! *missed* (the daemon was down or a tick stalled).
//!
//! - If any slot is on time, the newest one fires (`late = false`); every other slot in the range
//!   is reported as missed and never fires, so a stalled tick does not fire twice.
//! - Otherwise, with [`Misfire::Skip`] nothing fires and every slot is reported missed; with
//!   [`Misfire::RunOnce`] the newest missed slot fires once (`late = true`) and the rest are
//!   reported missed.
//! - No slots, or `now <= cursor`: nothing.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc,
};
use chrono_tz::Tz;
use cron::TimeUnitSpec;
use serde::{Deserialize, Serialize};

use crate::policy::parse_cron;

/// How far back a search looks for the offset in force before a fall-back change, to know how
/// long the repeated period is. Longer than any daylight-saving shift.
const DST_SLACK_HOURS: i64 = 3;
/// How long a spring-forward gap may be; the longest on record (Samoa, 2011) skipped a day.
const MAX_GAP_MINUTES: i32 = 2 * 24 * 60;
/// Where counting slots stops, so a per-second schedule after a long outage cannot stall a tick;
/// counts at this value mean "at least this many".
pub const MAX_COUNTED_FIRINGS: usize = 1_000_000;
/// How many missed slots [`due`] lists by instant; enough for a log line, the rest are counted.
pub const MAX_LISTED_MISSED: usize = 20;

/// Source of the current instant; the daemon uses [`SystemClock`], tests a [`ManualClock`].
pub trait Clock: Send + Sync {
    /// The instant to judge schedules at.
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock, for the running daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, so tests can walk through a schedule deterministically.
#[derive(Debug)]
pub struct ManualClock {
    at: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// Starts the clock at a fixed instant, so a test never depends on when it runs.
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock { at: Mutex::new(at) }
    }

    /// Jumps to an instant, e.g. to simulate a restart after an outage.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Moves the clock forward, as time passing between ticks; saturates at the latest instant
    /// chrono can hold rather than panicking.
    pub fn advance(&self, by: Duration) {
        let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        *at = TimeDelta::from_std(by)
            .ok()
            .and_then(|by| at.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What to do with a slot that passed beyond its starting deadline, as a policy's `misfire` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Drop missed slots: a promotion planned for a quiet hour should not run at a busy one.
    #[default]
    Skip,
    /// Catch up with one run for the newest missed slot, however many were missed.
    RunOnce,
}

impl Misfire {
    /// Reads the policy value; the error lists the accepted values so the user can fix the file.
    pub fn parse(text: &str) -> Result<Misfire, String> {
        match text {
            "skip" => Ok(Misfire::Skip),
            "run_once" => Ok(Misfire::RunOnce),
            other => Err(format!(
                "`{other}` is not a misfire policy; expected \"skip\" or \"run_once\""
            )),
        }
    }

    /// The spelling used in policy files, so messages and status output match what users write.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
        }
    }
}

/// A cron line bound to a time zone, firing by the daylight-saving rules in the module docs.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The cron line as written, for messages and status output.
    pub expression: String,
    /// The zone whose wall clock the cron line follows.
    pub timezone: Tz,
    schedule: cron::Schedule,
}

impl CronSchedule {
    /// Parses the line the same way policy windows do, so both accept the same forms; the error
    /// is [`parse_cron`]'s message.
    pub fn new(expression: &str, timezone: Tz) -> Result<CronSchedule, String> {
        Ok(CronSchedule {
            expression: expression.to_string(),
            timezone,
            schedule: parse_cron(expression)?,
        })
    }

    /// Firings strictly after `after`, in order, as UTC instants, following the DST rules in the
    /// module docs. Lazy, because a schedule may fire forever.
    ///
    /// The search starts at `after`'s own wall-clock time: wall-clock times map to instants in
    /// non-decreasing order, so no earlier one can fire after `after`.
    pub fn firings_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let walls = self
            .schedule
            .after(&self.wall_clock(after, TimeDelta::zero()));
        let firings = walls.filter_map(|wall| instant_of(self.timezone, wall.naive_utc()));
        distinct(firings.skip_while(move |at| *at <= after))
    }

    /// Firings at or before `at`, newest first; the mirror of [`Self::firings_after`], so the
    /// newest slots of a long outage are found without walking through all of it.
    ///
    /// After a fall-back, a repeated time reading later than `at` may already have fired (at its
    /// first occurrence), so the search starts that much later, plus the crate's one second.
    fn firings_until(&self, at: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let before_change = at.checked_sub_signed(TimeDelta::hours(DST_SLACK_HOURS));
        let offset_then = before_change.map_or(TimeDelta::zero(), |then| self.offset_at(then));
        let repeated = (offset_then - self.offset_at(at)).max(TimeDelta::zero());
        let walls = self
            .schedule
            .after(&self.wall_clock(at, repeated + TimeDelta::seconds(1)));
        let firings = walls
            .rev()
            .filter_map(|wall| instant_of(self.timezone, wall.naive_utc()));
        distinct(firings.skip_while(move |slot| *slot > at))
    }

    /// The local wall-clock time of `at`, shifted and dressed as UTC: the cron crate then
    /// searches plain wall-clock times and [`instant_of`] applies our DST rules. Kept a day
    /// inside chrono's range, where the crate's one-second steps and `naive_local` would panic
    /// (a clock saturated at the latest instant must not bring the daemon down).
    fn wall_clock(&self, at: DateTime<Utc>, shift: TimeDelta) -> DateTime<Utc> {
        let first = NaiveDateTime::MIN + TimeDelta::days(1);
        let last = NaiveDateTime::MAX - TimeDelta::days(1);
        let local = self.offset_at(at).checked_add(&shift);
        let local = local.and_then(|by| at.naive_utc().checked_add_signed(by));
        let beyond = if at.year() < 0 { first } else { last };
        local.unwrap_or(beyond).clamp(first, last).and_utc()
    }

    /// How far the zone's wall clock is ahead of UTC at `at`.
    fn offset_at(&self, at: DateTime<Utc>) -> TimeDelta {
        let offset = self
            .timezone
            .offset_from_utc_datetime(&at.naive_utc())
            .fix();
        TimeDelta::seconds(offset.local_minus_utc().into())
    }

    /// The next `n` firings after `after`, for status output and previews.
    pub fn next_firings(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.firings_after(after).take(n).collect()
    }

    /// The earliest `limit` firings in `(from, to]` and how many there are in all, so a year-long
    /// outage under a per-minute schedule stays cheap to report. The total stops at
    /// [`MAX_COUNTED_FIRINGS`].
    pub fn firings_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let listed = self
            .firings_after(from)
            .take_while(|at| *at <= to)
            .take(limit);
        (listed.collect(), self.count_between(from, to))
    }

    /// How many firings fall in `(from, to]`, at most [`MAX_COUNTED_FIRINGS`]. Local days without
    /// a daylight-saving change are counted from the cron fields and idle stretches are jumped,
    /// so a year of per-minute firings costs a few hundred steps; the partial days at both ends
    /// and the days with a change are walked firing by firing.
    fn count_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
        let mut total = 0;
        let mut edge = from;
        while total < MAX_COUNTED_FIRINGS {
            let Some(next) = self.firings_after(edge).next().filter(|at| *at <= to) else {
                break;
            };
            if next - edge > TimeDelta::days(1) {
                edge = next - TimeDelta::nanoseconds(1);
            }
            let day = self.wall_clock(edge, TimeDelta::zero()).date_naive();
            let Some(next_day) = day.succ_opt() else {
                break;
            };
            match self.plain_day(day) {
                Some((start, end)) if start == edge && end <= to => {
                    let first = self.fires_at_midnight(day);
                    let last = self.fires_at_midnight(next_day);
                    total += self.firings_on(day) + usize::from(last) - usize::from(first);
                    edge = end;
                }
                _ => {
                    let one_day_on = edge.checked_add_signed(TimeDelta::days(1)).unwrap_or(to);
                    let stop = instant_of(self.timezone, next_day.and_time(NaiveTime::MIN))
                        .filter(|at| *at > edge)
                        .unwrap_or(one_day_on)
                        .min(to);
                    let walked = self.firings_after(edge).take_while(|at| *at <= stop);
                    total += walked.take(MAX_COUNTED_FIRINGS - total).count();
                    edge = stop;
                }
            }
        }
        total.min(MAX_COUNTED_FIRINGS)
    }

    /// The instants a local day starts and ends at, if both midnights exist once and share one
    /// offset: then the day has no gap or repeated time, and its firings in `(start, end]` are
    /// exactly its wall-clock matches after midnight up to the next midnight.
    fn plain_day(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let midnight = |day: NaiveDate| {
            let local = self
                .timezone
                .from_local_datetime(&day.and_time(NaiveTime::MIN));
            local
                .single()
                .map(|at| (at.offset().fix(), at.with_timezone(&Utc)))
        };
        let ((start_offset, start), (end_offset, end)) =
            (midnight(day)?, midnight(day.succ_opt()?)?);
        (start_offset == end_offset).then_some((start, end))
    }

    /// How many wall-clock times of `day` match: all of hours × minutes × seconds, or none.
    fn firings_on(&self, day: NaiveDate) -> usize {
        let cron = &self.schedule;
        let date_matches = u32::try_from(day.year()).is_ok_and(|year| cron.years().includes(year))
            && cron.months().includes(day.month())
            && cron.days_of_month().includes(day.day())
            && cron
                .days_of_week()
                .includes(day.weekday().number_from_sunday());
        let per_day = cron.hours().count() * cron.minutes().count() * cron.seconds().count();
        if date_matches {
            per_day as usize
        } else {
            0
        }
    }

    /// Whether the schedule fires at 00:00:00 on `day`, the one time [`Self::count_between`]
    /// moves from the day it starts to the day before.
    fn fires_at_midnight(&self, day: NaiveDate) -> bool {
        self.schedule
            .includes(day.and_time(NaiveTime::MIN).and_utc())
    }
}

/// Drops repeats of the previous instant: several gap times land on the same gap end.
fn distinct(firings: impl Iterator<Item = DateTime<Utc>>) -> impl Iterator<Item = DateTime<Utc>> {
    let mut previous = None;
    firings.filter(move |at| previous.replace(*at) != Some(*at))
}

/// The instant a wall-clock time fires at: the first occurrence of a repeated time, the end of
/// the gap for a skipped one. `None` only if the zone data had a gap longer than any on record.
fn instant_of(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match timezone.from_local_datetime(&wall) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.with_timezone(&Utc)),
        LocalResult::None => gap_end(timezone, wall),
    }
}

/// The first instant after the spring-forward gap holding `wall`: minute steps find a valid
/// wall-clock time, second steps back find where the gap really ends (old zone data has
/// transitions at odd seconds).
fn gap_end(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let exists = |wall: &NaiveDateTime| timezone.from_local_datetime(wall).earliest().is_some();
    let mut end = (1..=MAX_GAP_MINUTES)
        .filter_map(|m| wall.checked_add_signed(TimeDelta::minutes(m.into())))
        .find(exists)?;
    let second = TimeDelta::seconds(1);
    while let Some(earlier) = end
        .checked_sub_signed(second)
        .filter(|t| *t > wall && exists(t))
    {
        end = earlier;
    }
    instant_of(timezone, end)
}

/// What a schedule should do at `now`, given that every slot up to and including `cursor` has
/// already been handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// The slot to fire now, if any; the firing is keyed by this scheduled instant, not by `now`,
    /// so a retried tick recognises the same slot.
    pub fire: Option<DateTime<Utc>>,
    /// Whether `fire` is a late catch-up under [`Misfire::RunOnce`] (true) or on time (false),
    /// so the run can be labelled as such.
    pub late: bool,
    /// Slots in `(cursor, now]` that will not fire, the newest [`MAX_LISTED_MISSED`] of them,
    /// newest last, so the operator can see what was dropped ...
    pub missed: Vec<DateTime<Utc>>,
    /// ... and how many there were in all (at most [`MAX_COUNTED_FIRINGS`]).
    pub missed_count: usize,
}

/// Decides what fires at `now` by the rules in the module docs, so the daemon only has to fire
/// `fire`, report `missed` and move its cursor to `now` (every slot up to it is then handled).
pub fn due(
    schedule: &CronSchedule,
    misfire: Misfire,
    starting_deadline: Duration,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Due {
    let mut due = Due::default();
    if now <= cursor {
        return due;
    }
    let mut newest: Vec<DateTime<Utc>> = schedule
        .firings_until(now)
        .take_while(|slot| *slot > cursor)
        .take(MAX_LISTED_MISSED + 1)
        .collect();
    let Some(&latest) = newest.first() else {
        return due;
    };
    let total = if newest.len() <= MAX_LISTED_MISSED {
        newest.len()
    } else {
        schedule.count_between(cursor, now)
    };
    let deadline = TimeDelta::from_std(starting_deadline).unwrap_or(TimeDelta::MAX);
    let on_time = now.signed_duration_since(latest) <= deadline;
    if on_time || misfire == Misfire::RunOnce {
        due.fire = Some(newest.remove(0));
        due.late = !on_time;
    }
    newest.truncate(MAX_LISTED_MISSED);
    due.missed = newest.into_iter().rev().collect();
    due.missed_count = total - usize::from(due.fire.is_some());
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Australia::Lord_Howe, Europe::Berlin, UTC};

    /// A UTC instant from "YYYY-MM-DD HH:MM[:SS]", to keep the expected lists readable.
    fn at(text: &str) -> DateTime<Utc> {
        let text = format!("{text}{}", if text.len() == 16 { ":00" } else { "" });
        let naive = NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S");
        naive.expect("test instants are well formed").and_utc()
    }

    fn ats(texts: &[&str]) -> Vec<DateTime<Utc>> {
        texts.iter().map(|text| at(text)).collect()
    }

    fn cron(expression: &str, timezone: Tz) -> CronSchedule {
        CronSchedule::new(expression, timezone).expect("test cron lines are valid")
    }

    #[test]
    fn spring_forward_fires_once_at_the_end_of_the_gap() {
        let daily = cron("30 2 * * *", Berlin);
        let expected = ats(&["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"]);
        assert_eq!(daily.next_firings(at("2026-03-28 00:00"), 3), expected);
        let just_before = daily.next_firings(at("2026-03-29 00:59:59"), 1);
        assert_eq!(just_before, ats(&["2026-03-29 01:00"]));
        let at_gap_end = daily.next_firings(at("2026-03-29 01:00"), 1);
        assert_eq!(at_gap_end, ats(&["2026-03-30 00:30"]));
        // 02:00..02:45 CET do not exist: they and the 03:00 CEST slot fire once, at 01:00 UTC.
        let quarterly = cron("*/15 * * * *", Berlin);
        let expected = ats(&["2026-03-29 00:45", "2026-03-29 01:00", "2026-03-29 01:15"]);
        assert_eq!(quarterly.next_firings(at("2026-03-29 00:30"), 3), expected);
    }

    #[test]
    fn fall_back_fires_a_repeated_time_at_its_first_occurrence_only() {
        let daily = cron("30 2 * * *", Berlin);
        let expected = ats(&["2026-10-25 00:30", "2026-10-26 01:30"]);
        assert_eq!(daily.next_firings(at("2026-10-24 12:00"), 2), expected);
        let quarterly = cron("*/15 * * * *", Berlin);
        let (from, to) = (at("2026-10-24 23:00"), at("2026-10-25 03:00"));
        let (firings, total) = quarterly.firings_between(from, to, 99);
        assert_eq!(total, 12);
        assert!(firings.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(
            firings[6..8],
            ats(&["2026-10-25 00:45", "2026-10-25 02:00"])
        );
        // From inside the second pass (02:30 CET): 02:45 CET already fired in the first pass.
        let second_pass = quarterly.next_firings(at("2026-10-25 01:30"), 1);
        assert_eq!(second_pass, ats(&["2026-10-25 02:00"]));
        let first_pass = quarterly.next_firings(at("2026-10-25 00:40"), 2);
        assert_eq!(first_pass, ats(&["2026-10-25 00:45", "2026-10-25 02:00"]));
    }

    #[test]
    fn a_search_from_any_instant_agrees_with_one_long_walk() {
        for (zone, day) in [
            (Berlin, "2026-03-29"),
            (Berlin, "2026-10-25"),
            (Lord_Howe, "2026-04-05"),
        ] {
            let schedule = cron("*/15 * * * *", zone);
            let start = at(&format!("{day} 00:00")) - TimeDelta::days(1);
            let walk: Vec<_> = schedule.firings_after(start).take(3 * 24 * 4).collect();
            let probes = (0..400).map(|step| start + TimeDelta::seconds(43_200 + step * 437));
            for probe in probes.chain(walk[90..190].iter().copied()) {
                let next = walk.iter().find(|firing| **firing > probe);
                assert_eq!(
                    schedule.firings_after(probe).next().as_ref(),
                    next,
                    "{probe}"
                );
                let newest = walk.iter().rev().find(|firing| **firing <= probe);
                assert_eq!(
                    schedule.firings_until(probe).next().as_ref(),
                    newest,
                    "{probe}"
                );
            }
        }
        // Old zone data jumps at odd seconds: Berlin left local mean time (+0:53:28) in 1893.
        let in_gap = at("1893-04-01 00:03").naive_utc();
        assert_eq!(gap_end(Berlin, in_gap), Some(at("1893-03-31 23:06:32")));
    }

    #[test]
    fn new_york_weekdays_follow_the_offset() {
        let weekdays = cron("0 10 * * Mon-Fri", New_York);
        let spring = ats(&["2026-03-06 15:00", "2026-03-09 14:00"]);
        assert_eq!(weekdays.next_firings(at("2026-03-06 00:00"), 2), spring);
        let autumn = ats(&["2026-10-30 14:00", "2026-11-02 15:00"]);
        assert_eq!(weekdays.next_firings(at("2026-10-30 00:00"), 2), autumn);
    }

    #[test]
    fn crate_form_and_day_names_are_accepted() {
        let six_fields = cron("0 30 9 * * Mon", UTC);
        let monday = ats(&["2026-06-08 09:30"]);
        assert_eq!(six_fields.next_firings(at("2026-06-01 09:30"), 1), monday);
        let weekend = cron("0 9 * * Sat,Sun", UTC);
        let expected = ats(&["2026-06-06 09:00", "2026-06-07 09:00"]);
        assert_eq!(weekend.next_firings(at("2026-06-01 00:00"), 2), expected);
        let error = CronSchedule::new("0 10 * *", UTC).map(|_| ()).unwrap_err();
        assert!(error.contains("has 4 fields"), "{error}");
    }

    #[test]
    fn firings_between_lists_up_to_the_limit_and_counts_all() {
        let hourly = cron("0 * * * *", UTC);
        let (start, end) = (at("2026-06-01 00:00"), at("2026-06-02 00:00"));
        let first = ats(&["2026-06-01 01:00", "2026-06-01 02:00", "2026-06-01 03:00"]);
        assert_eq!(hourly.firings_between(start, end, 3), (first, 24));
        assert_eq!(hourly.firings_between(end, start, 3), (vec![], 0));
    }

    #[test]
    fn counting_by_day_agrees_with_walking_every_firing() {
        let cases = [
            "*/15 * * * *   | Europe/Berlin       | 2026-01-01 00:07 | 2027-01-01 00:00",
            "30 2 * * *     | Europe/Berlin       | 2026-03-01 00:00 | 2026-11-30 00:00",
            "0 0 * * *      | America/Sao_Paulo   | 2018-10-01 00:00 | 2019-03-01 00:00",
            "*/30 * * * *   | Australia/Lord_Howe | 2026-01-01 00:00 | 2026-12-31 00:00",
            "0 12 * * *     | Pacific/Apia        | 2011-12-01 00:00 | 2012-01-31 00:00",
            "*/10 * * * * * | America/New_York    | 2026-11-01 01:00 | 2026-11-02 01:00:05",
            "0 10 * * 1-5   | America/New_York    | 2026-01-01 00:00 | 2027-01-01 00:00",
            "0 0 0 13 * Fri | Europe/Berlin       | 2026-01-01 00:00 | 2031-06-01 00:00",
        ];
        for case in cases {
            let [expression, zone, from, to] =
                case.split('|').map(str::trim).collect::<Vec<_>>()[..]
            else {
                panic!("four columns in {case}");
            };
            let (schedule, from, to) = (
                cron(expression, zone.parse().expect("known zone")),
                at(from),
                at(to),
            );
            let walked = schedule
                .firings_after(from)
                .take_while(|f| *f <= to)
                .count();
            assert_eq!(schedule.count_between(from, to), walked, "{case}");
        }
    }

    #[test]
    fn misfire_parses_its_policy_spelling() {
        for misfire in [Misfire::Skip, Misfire::RunOnce] {
            assert_eq!(Misfire::parse(misfire.as_str()), Ok(misfire));
        }
        assert_eq!(Misfire::default(), Misfire::Skip);
        let error = Misfire::parse("run-once").unwrap_err();
        assert!(error.contains("\"skip\" or \"run_once\""), "{error}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(at("2026-01-01 00:00"));
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), at("2026-01-01 00:01:30"));
        clock.set(at("2027-01-01 00:00"));
        assert_eq!(clock.now(), at("2027-01-01 00:00"));
    }

    const DEADLINE: Duration = Duration::from_secs(300);

    /// What [`due`] says for a cron line, with a five-minute deadline and instants as text.
    fn verdict(cron_line: &str, timezone: Tz, misfire: Misfire, cursor: &str, now: &str) -> Due {
        due(
            &cron(cron_line, timezone),
            misfire,
            DEADLINE,
            at(cursor),
            at(now),
        )
    }

    fn outcome(fire: Option<&str>, late: bool, missed: &[&str], missed_count: usize) -> Due {
        let (fire, missed) = (fire.map(at), ats(missed));
        Due {
            fire,
            late,
            missed,
            missed_count,
        }
    }

    #[test]
    fn due_fires_the_newest_on_time_slot() {
        let (cursor, now) = ("2026-06-01 09:00", "2026-06-01 10:00:30");
        let on_time = verdict("0 10 * * *", UTC, Misfire::Skip, cursor, now);
        assert_eq!(on_time, outcome(Some("2026-06-01 10:00"), false, &[], 0));
        let (cursor, now) = ("2026-06-01 10:00", "2026-06-01 10:02:10");
        let stalled = verdict("* * * * *", UTC, Misfire::RunOnce, cursor, now);
        let older = ["2026-06-01 10:01"];
        assert_eq!(stalled, outcome(Some("2026-06-01 10:02"), false, &older, 1));
    }

    #[test]
    fn due_after_an_outage_follows_the_misfire_policy() {
        let (cursor, now) = ("2026-06-01 10:00", "2026-06-04 12:00");
        let slots = ["2026-06-02 10:00", "2026-06-03 10:00", "2026-06-04 10:00"];
        let skipped = verdict("0 10 * * *", UTC, Misfire::Skip, cursor, now);
        assert_eq!(skipped, outcome(None, false, &slots, 3));
        let caught_up = verdict("0 10 * * *", UTC, Misfire::RunOnce, cursor, now);
        assert_eq!(caught_up, outcome(Some(slots[2]), true, &slots[..2], 2));
    }

    #[test]
    fn due_across_daylight_saving_changes_sees_each_slot_once() {
        let quarterly = |cursor, now| verdict("*/15 * * * *", Berlin, Misfire::Skip, cursor, now);
        let autumn = quarterly("2026-10-25 00:00", "2026-10-25 02:10");
        let slots = [
            "2026-10-25 00:15",
            "2026-10-25 00:30",
            "2026-10-25 00:45",
            "2026-10-25 02:00",
        ];
        assert_eq!(autumn, outcome(None, false, &slots, 4));
        let spring = quarterly("2026-03-29 00:30", "2026-03-29 01:15");
        let missed = ["2026-03-29 00:45", "2026-03-29 01:00"];
        assert_eq!(spring, outcome(Some("2026-03-29 01:15"), false, &missed, 2));
    }

    #[test]
    fn due_without_slots_does_nothing() {
        for now in ["2026-06-01 10:00", "2026-06-01 09:00", "2026-06-02 09:00"] {
            let nothing = verdict("0 10 * * *", UTC, Misfire::RunOnce, "2026-06-01 10:00", now);
            assert_eq!(nothing, Due::default(), "{now}");
        }
    }

    #[test]
    fn due_after_a_long_outage_of_a_busy_schedule_stays_cheap() {
        let started = std::time::Instant::now();
        let (cursor, now) = ("2025-01-01 00:00", "2026-02-05 00:10");
        let back = verdict("* * * * *", UTC, Misfire::Skip, cursor, now);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(back.fire, Some(at("2026-02-05 00:10")));
        assert_eq!(back.missed_count, 400 * 24 * 60 + 10 - 1);
        assert_eq!(back.missed.len(), MAX_LISTED_MISSED);
        assert_eq!(back.missed[0], at("2026-02-04 23:50"));
        assert_eq!(back.missed.last(), Some(&at("2026-02-05 00:09")));
        let (cursor, now) = ("2025-01-01 00:00", "2026-02-05 00:00:30");
        let stale = due(
            &cron("* * * * *", UTC),
            Misfire::Skip,
            Duration::from_secs(10),
            at(cursor),
            at(now),
        );
        assert_eq!((stale.fire, stale.missed_count), (None, 400 * 24 * 60));
        assert_eq!(stale.missed.last(), Some(&at("2026-02-05 00:00")));
    }
}
