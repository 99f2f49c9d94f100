//! Pure update-policy decisions: no database, no clock of its own.
//!
//! The Omaha handler gathers a [`CheckContext`] (with counts read under a row
//! lock when a new grant is at stake) and calls [`decide`]. Tests drive it with
//! any `now` they like.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use fastpatch_omaha::EventKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::version;

/// Instance status, as shown to operators (Nebraska's set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStatus {
    Undefined,
    Granted,
    Downloading,
    Downloaded,
    Installed,
    Complete,
    Error,
    OnHold,
}

/// A status name that is none of [`InstanceStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance status {0:?} (one of: {names})", names = InstanceStatus::names())]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for InstanceStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        InstanceStatus::parse(s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The status's name; honours width and alignment (`{:<12}` in the CLI's instance list).
impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a stored row's status column decodes (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for InstanceStatus {
    type Error = UnknownStatus;

    fn try_from(s: String) -> Result<Self, UnknownStatus> {
        s.parse()
    }
}

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 8] = [
        InstanceStatus::Undefined,
        InstanceStatus::Granted,
        InstanceStatus::Downloading,
        InstanceStatus::Downloaded,
        InstanceStatus::Installed,
        InstanceStatus::Complete,
        InstanceStatus::Error,
        InstanceStatus::OnHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Undefined => "undefined",
            InstanceStatus::Granted => "granted",
            InstanceStatus::Downloading => "downloading",
            InstanceStatus::Downloaded => "downloaded",
            InstanceStatus::Installed => "installed",
            InstanceStatus::Complete => "complete",
            InstanceStatus::Error => "error",
            InstanceStatus::OnHold => "on-hold",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Every name, comma-separated (for error messages and help).
    pub fn names() -> String {
        Self::ALL.map(InstanceStatus::as_str).join(", ")
    }

    /// Holding a grant: counts against max-concurrent and can time out.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            InstanceStatus::Granted
                | InstanceStatus::Downloading
                | InstanceStatus::Downloaded
                | InstanceStatus::Installed
        )
    }

    /// The statuses [`InstanceStatus::in_progress`] is true for, for SQL `IN` lists.
    pub const IN_PROGRESS: [&'static str; 4] =
        ["granted", "downloading", "downloaded", "installed"];
}

/// Office hours: updates are only granted inside this weekly window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfficeHours {
    pub tz: Tz,
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minutes after local midnight; `end < start` wraps past midnight.
    pub start_minute: u32,
    pub end_minute: u32,
}

impl OfficeHours {
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let local = self.tz.from_utc_datetime(&now.naive_utc());
        let day = local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        let day_on = |d: u32| self.days & (1 << (d % 7)) != 0;
        if self.start_minute <= self.end_minute {
            day_on(day) && minute >= self.start_minute && minute < self.end_minute
        } else {
            (day_on(day) && minute >= self.start_minute)
                || (day_on(day + 6) && minute < self.end_minute)
        }
    }
}

/// A group's rollout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    pub updates_enabled: bool,
    pub max_updates_per_period: Option<u64>,
    pub period_secs: i64,
    pub max_concurrent: Option<u64>,
    /// A grant not completed within this many seconds has timed out.
    pub update_timeout_secs: i64,
    pub office_hours: Option<OfficeHours>,
    /// One update at a time until the first succeeds; a failure or timeout halts the group.
    pub safe_mode: bool,
    /// Staged rollout: the share of machines eligible grows linearly over this many seconds.
    pub rollout_duration_secs: i64,
    /// When the current channel version reached this group (unix seconds).
    pub rollout_started_at: i64,
    pub halted: bool,
}

impl Default for GroupPolicy {
    /// Sane defaults: enabled, safe mode on, one-hour timeout, no other limits.
    fn default() -> Self {
        GroupPolicy {
            updates_enabled: true,
            max_updates_per_period: None,
            period_secs: 3600,
            max_concurrent: None,
            update_timeout_secs: 3600,
            office_hours: None,
            safe_mode: true,
            rollout_duration_secs: 0,
            rollout_started_at: 0,
            halted: false,
        }
    }
}

/// What the instance looked like before this check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub status: InstanceStatus,
    pub target_version: Option<String>,
    pub granted_at: Option<i64>,
}

/// Counts over the group, read under the group's row lock before a new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCounts {
    pub grants_in_period: u64,
    /// In-progress grants that have not timed out, other than this machine.
    pub in_progress: u64,
    /// Some machine in the group completed the update to the target version.
    pub target_succeeded: bool,
}

pub struct CheckContext<'a> {
    pub now: DateTime<Utc>,
    pub machine_id: &'a str,
    pub current_version: &'a str,
    pub instance: Option<&'a InstanceView>,
    pub policy: &'a GroupPolicy,
    pub channel_version: Option<&'a str>,
    /// Mandatory intermediate versions for the app.
    pub floors: &'a [String],
    /// Whether a package exists for a version on this machine's arch.
    pub has_package: &'a dyn Fn(&str) -> bool,
    pub counts: GroupCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoUpdateReason {
    NoChannelVersion,
    UpToDate,
    /// The channel is behind the machine; never offer a downgrade.
    WouldDowngrade,
    NoPackageForArch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    Halted,
    UpdatesDisabled,
    OutsideOfficeHours,
    RolloutNotReached,
    SafeModeWaiting,
    MaxConcurrent,
    MaxPerPeriod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    NoUpdate(NoUpdateReason),
    /// An update exists for this machine but is not granted now.
    Hold {
        version: String,
        reason: HoldReason,
    },
    /// Offer `version`; `new_grant` means it counts against the limits.
    Offer {
        version: String,
        new_grant: bool,
    },
}

impl Decision {
    pub fn needs_new_grant(&self) -> bool {
        matches!(
            self,
            Decision::Offer {
                new_grant: true,
                ..
            }
        )
    }
}

/// The version this machine should move to next: the channel's, or the lowest
/// floor between the machine and the channel.
pub fn next_version<'a>(current: &str, channel: &'a str, floors: &'a [String]) -> &'a str {
    floors
        .iter()
        .filter(|f| version::newer(f, current) && version::newer(channel, f))
        .min_by(|a, b| version::compare(a, b))
        .map(String::as_str)
        .unwrap_or(channel)
}

/// A machine's fixed place in [0, 1) for staged rollouts, from its id alone.
pub fn rollout_place(machine_id: &str) -> f64 {
    let digest = Sha256::digest(machine_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Share of machines eligible at `now`, in [0, 1].
pub fn rollout_fraction(policy: &GroupPolicy, now: DateTime<Utc>) -> f64 {
    if policy.rollout_duration_secs <= 0 {
        return 1.0;
    }
    let elapsed = (now.timestamp() - policy.rollout_started_at) as f64;
    (elapsed / policy.rollout_duration_secs as f64).clamp(0.0, 1.0)
}

/// A grant held longer than the timeout without completing.
pub fn timed_out(instance: &InstanceView, policy: &GroupPolicy, now: DateTime<Utc>) -> bool {
    instance.status.in_progress()
        && instance
            .granted_at
            .is_some_and(|g| now - Duration::seconds(policy.update_timeout_secs) > ts(g))
}

fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

pub fn decide(ctx: &CheckContext<'_>) -> Decision {
    let Some(channel) = ctx.channel_version else {
        return Decision::NoUpdate(NoUpdateReason::NoChannelVersion);
    };
    match version::compare(channel, ctx.current_version) {
        std::cmp::Ordering::Equal => return Decision::NoUpdate(NoUpdateReason::UpToDate),
        std::cmp::Ordering::Less => return Decision::NoUpdate(NoUpdateReason::WouldDowngrade),
        std::cmp::Ordering::Greater => {}
    }
    let target = next_version(ctx.current_version, channel, ctx.floors);
    if !(ctx.has_package)(target) {
        return Decision::NoUpdate(NoUpdateReason::NoPackageForArch);
    }
    let hold = |reason| Decision::Hold {
        version: target.to_owned(),
        reason,
    };
    // A machine already holding a live grant for this version keeps it.
    if let Some(inst) = ctx.instance {
        if inst.status.in_progress()
            && inst.target_version.as_deref() == Some(target)
            && !timed_out(inst, ctx.policy, ctx.now)
            && !ctx.policy.halted
        {
            return Decision::Offer {
                version: target.to_owned(),
                new_grant: false,
            };
        }
    }
    let p = ctx.policy;
    if p.halted {
        return hold(HoldReason::Halted);
    }
    if !p.updates_enabled {
        return hold(HoldReason::UpdatesDisabled);
    }
    if let Some(oh) = &p.office_hours {
        if !oh.contains(ctx.now) {
            return hold(HoldReason::OutsideOfficeHours);
        }
    }
    if rollout_place(ctx.machine_id) >= rollout_fraction(p, ctx.now) {
        return hold(HoldReason::RolloutNotReached);
    }
    if p.safe_mode && !ctx.counts.target_succeeded && ctx.counts.in_progress >= 1 {
        return hold(HoldReason::SafeModeWaiting);
    }
    if p.max_concurrent
        .is_some_and(|m| ctx.counts.in_progress >= m)
    {
        return hold(HoldReason::MaxConcurrent);
    }
    if p.max_updates_per_period
        .is_some_and(|m| ctx.counts.grants_in_period >= m)
    {
        return hold(HoldReason::MaxPerPeriod);
    }
    Decision::Offer {
        version: target.to_owned(),
        new_grant: true,
    }
}

/// The status an event moves an instance to.
pub fn status_after_event(kind: EventKind) -> Option<InstanceStatus> {
    match kind {
        EventKind::DownloadStarted => Some(InstanceStatus::Downloading),
        EventKind::Downloaded => Some(InstanceStatus::Downloaded),
        EventKind::Installed => Some(InstanceStatus::Installed),
        EventKind::UpdateComplete => Some(InstanceStatus::Complete),
        EventKind::RolledBack | EventKind::Error(_) => Some(InstanceStatus::Error),
        EventKind::Deferred | EventKind::Other { .. } => None,
    }
}

/// Safe mode halts the group on the first failure (including a rollback).
pub fn event_halts_group(policy: &GroupPolicy, kind: EventKind) -> bool {
    policy.safe_mode && matches!(kind, EventKind::RolledBack | EventKind::Error(_))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
