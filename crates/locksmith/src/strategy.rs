//! The reboot strategies as one state machine: `step(policy, state, event, now) -> actions`.
//!
//! Pure: the daemon (and the fleet simulation) perform the actions (lock, unlock, broadcast,
//! reboot, timers) and feed the results back as events. Nothing here does I/O or reads a clock.

use chrono::{DateTime, Duration, Utc};

use crate::window::Window;

/// `REBOOT_STRATEGY` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Reboot as soon as an update is staged (inside the window, if any).
    Reboot,
    /// Take a slot of the etcd semaphore first.
    EtcdLock,
    /// Do nothing; the operator reboots.
    Off,
    /// `etcd-lock` when an etcd is configured and reachable, else `reboot`.
    BestEffort,
    /// Take a slot from a FleetLock server first.
    FleetLock,
}

impl Strategy {
    /// Parses a `REBOOT_STRATEGY` value (empty means the default, best-effort).
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "best-effort" => Some(Strategy::BestEffort),
            "reboot" => Some(Strategy::Reboot),
            "etcd-lock" => Some(Strategy::EtcdLock),
            "off" => Some(Strategy::Off),
            "fleetlock" | "fleet-lock" => Some(Strategy::FleetLock),
            _ => None,
        }
    }

    /// The name written to coordinator.conf.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reboot => "reboot",
            Strategy::EtcdLock => "etcd-lock",
            Strategy::Off => "off",
            Strategy::BestEffort => "best-effort",
            Strategy::FleetLock => "fleetlock",
        }
    }
}

/// How the machine behaves once the strategy is resolved (best-effort resolved by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reboot without asking anyone.
    Uncoordinated,
    /// Take a lock (etcd semaphore or FleetLock) before rebooting; release it after the boot.
    Coordinated,
    /// Never reboot.
    Off,
}

/// The fixed inputs of the machine.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub window: Option<Window>,
    /// Wait between telling logged-in users and rebooting (locksmith: 5 minutes).
    pub reboot_delay: Duration,
    /// Wait before re-trying a lock that was full or failed.
    pub lock_retry: Duration,
    /// First unlock retry delay; doubles up to `unlock_backoff_max`.
    pub unlock_backoff: Duration,
    pub unlock_backoff_max: Duration,
}

impl Policy {
    /// locksmith's timings: 5 min warning, unlock retry 5 s doubling to 5 min.
    pub fn new(mode: Mode, window: Option<Window>) -> Self {
        Policy {
            mode,
            window,
            reboot_delay: Duration::minutes(5),
            lock_retry: Duration::seconds(30),
            unlock_backoff: Duration::seconds(5),
            unlock_backoff_max: Duration::minutes(5),
        }
    }

    fn window_wait(&self, now: DateTime<Utc>) -> Duration {
        self.window
            .as_ref()
            .map_or(Duration::zero(), |w| w.wait(now))
    }

    /// Unlock retry delay after `attempt` failures (5 s, 10 s, 20 s, ... capped).
    pub fn unlock_delay(&self, attempt: u32) -> Duration {
        let mut d = self.unlock_backoff;
        for _ in 0..attempt.min(30) {
            d = d * 2;
            if d >= self.unlock_backoff_max {
                return self.unlock_backoff_max;
            }
        }
        d.min(self.unlock_backoff_max)
    }
}

/// The `STATE=` of coordinator.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordState {
    Starting,
    Running,
    RebootPlanned,
    Rebooting,
}

impl CoordState {
    pub fn as_str(self) -> &'static str {
        match self {
            CoordState::Starting => "starting",
            CoordState::Running => "running",
            CoordState::RebootPlanned => "reboot-planned",
            CoordState::Rebooting => "rebooting",
        }
    }
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for the booted slot to be marked good (coordinated mode only).
    WaitBootGood { staged: bool },
    /// Releasing the hold taken before the reboot that brought us here.
    Releasing { attempt: u32, staged: bool },
    /// No update staged.
    Idle,
    /// Update staged, waiting for the window before locking.
    WaitWindowLock,
    /// Trying to take the lock.
    Locking { attempt: u32 },
    /// Lock held, but the window closed while we waited for it.
    WaitWindowReboot,
    /// Users are being told.
    Broadcasting,
    /// Users were told; waiting before rebooting.
    RebootDelay,
    /// Reboot asked for; nothing more to do.
    Rebooting,
}

impl State {
    /// Every state's name, as [`State::name`] gives it (the metrics list them all).
    pub const NAMES: [&'static str; 9] = [
        "wait_boot_good",
        "releasing",
        "idle",
        "wait_window_lock",
        "locking",
        "wait_window_reboot",
        "broadcasting",
        "reboot_delay",
        "rebooting",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            State::WaitBootGood { .. } => "wait_boot_good",
            State::Releasing { .. } => "releasing",
            State::Idle => "idle",
            State::WaitWindowLock => "wait_window_lock",
            State::Locking { .. } => "locking",
            State::WaitWindowReboot => "wait_window_reboot",
            State::Broadcasting => "broadcasting",
            State::RebootDelay => "reboot_delay",
            State::Rebooting => "rebooting",
        }
    }

    /// Whether this machine waits for a reboot slot (or for the window to try for one).
    pub fn waits_for_slot(&self) -> bool {
        matches!(self, State::WaitWindowLock | State::Locking { .. })
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The daemon started.
    Start,
    /// The booted slot is marked good.
    BootGood,
    /// The engine reports `UPDATE_STATUS_UPDATED_NEED_REBOOT`.
    UpdateStaged,
    /// A timer asked for with [`Action::WakeAfter`] fired.
    Tick,
    /// Lock taken (or already ours).
    Locked,
    /// The lock is full or could not be reached.
    LockFailed(String),
    /// Our hold is released (or we held none).
    Unlocked,
    /// Releasing failed (etcd unreachable, ...).
    UnlockFailed(String),
    /// The broadcast went out to `told` terminals.
    Broadcasted { told: usize },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write coordinator.conf with this state.
    SetState(CoordState),
    Lock,
    Unlock,
    Broadcast,
    Reboot,
    /// Deliver [`Event::Tick`] after this long (replaces any earlier timer).
    WakeAfter(Duration),
}

/// The one place that decides. Returns the new state and the actions to perform.
pub fn step(
    policy: &Policy,
    state: State,
    event: Event,
    now: DateTime<Utc>,
) -> (State, Vec<Action>) {
    use Action as A;
    use State as S;
    match (state, event) {
        (_, Event::Start) => match policy.mode {
            Mode::Coordinated => (
                S::WaitBootGood { staged: false },
                vec![A::SetState(CoordState::Starting)],
            ),
            _ => (S::Idle, vec![A::SetState(CoordState::Running)]),
        },
        (S::WaitBootGood { staged }, Event::BootGood) => {
            (S::Releasing { attempt: 0, staged }, vec![A::Unlock])
        }
        (S::WaitBootGood { .. }, Event::UpdateStaged) => (S::WaitBootGood { staged: true }, vec![]),
        (S::Releasing { attempt, .. }, Event::UpdateStaged) => (
            S::Releasing {
                attempt,
                staged: true,
            },
            vec![],
        ),
        (S::Releasing { staged, .. }, Event::Unlocked) => {
            let mut actions = vec![A::SetState(CoordState::Running)];
            if staged {
                let (s, more) = plan(policy, now);
                actions.extend(more);
                (s, actions)
            } else {
                (S::Idle, actions)
            }
        }
        (S::Releasing { attempt, staged }, Event::UnlockFailed(_)) => (
            S::Releasing {
                attempt: attempt + 1,
                staged,
            },
            vec![A::WakeAfter(policy.unlock_delay(attempt))],
        ),
        (S::Releasing { attempt, staged }, Event::Tick) => {
            (S::Releasing { attempt, staged }, vec![A::Unlock])
        }
        (S::Idle, Event::UpdateStaged) => match policy.mode {
            Mode::Off => (S::Idle, vec![]),
            _ => plan(policy, now),
        },
        (S::WaitWindowLock, Event::Tick) => plan(policy, now),
        (S::Locking { attempt }, Event::Tick) => {
            let wait = policy.window_wait(now);
            if wait > Duration::zero() {
                (S::WaitWindowLock, vec![A::WakeAfter(wait)])
            } else {
                (S::Locking { attempt }, vec![A::Lock])
            }
        }
        (S::Locking { attempt }, Event::LockFailed(_)) => (
            S::Locking {
                attempt: attempt + 1,
            },
            vec![A::WakeAfter(policy.lock_retry)],
        ),
        (S::Locking { .. }, Event::Locked) | (S::WaitWindowReboot, Event::Tick) => {
            // The lock may have taken long: check the window again before rebooting.
            let wait = policy.window_wait(now);
            if wait > Duration::zero() {
                (S::WaitWindowReboot, vec![A::WakeAfter(wait)])
            } else {
                (S::Broadcasting, vec![A::Broadcast])
            }
        }
        (S::Broadcasting, Event::Broadcasted { told }) => {
            if told > 0 && policy.reboot_delay > Duration::zero() {
                (S::RebootDelay, vec![A::WakeAfter(policy.reboot_delay)])
            } else {
                reboot()
            }
        }
        (S::RebootDelay, Event::Tick) => reboot(),
        // Everything else (a repeated StatusUpdate, a stale timer, ...) changes nothing.
        (state, _) => (state, vec![]),
    }
}

/// An update is staged: wait for the window, then lock (coordinated) or reboot.
fn plan(policy: &Policy, now: DateTime<Utc>) -> (State, Vec<Action>) {
    let mut actions = vec![Action::SetState(CoordState::RebootPlanned)];
    let wait = policy.window_wait(now);
    if wait > Duration::zero() {
        actions.push(Action::WakeAfter(wait));
        return (State::WaitWindowLock, actions);
    }
    match policy.mode {
        Mode::Coordinated => {
            actions.push(Action::Lock);
            (State::Locking { attempt: 0 }, actions)
        }
        _ => {
            actions.push(Action::Broadcast);
            (State::Broadcasting, actions)
        }
    }
}

fn reboot() -> (State, Vec<Action>) {
    (
        State::Rebooting,
        vec![Action::SetState(CoordState::Rebooting), Action::Reboot],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{parse_zone, Window};
    use Action as A;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Runs a list of events, returning the final state and all actions.
    fn run(policy: &Policy, events: &[(Event, &str)]) -> (State, Vec<Action>) {
        let mut state = State::Idle;
        let mut all = vec![];
        for (e, now) in events {
            let (s, a) = step(policy, state, e.clone(), t(now));
            state = s;
            all.extend(a);
        }
        (state, all)
    }

    const T0: &str = "2026-01-10T12:00:00Z";

    #[test]
    fn reboot_strategy_reboots_after_broadcast_delay() {
        let p = Policy::new(Mode::Uncoordinated, None);
        let (s, a) = run(
            &p,
            &[
                (Event::Start, T0),
                (Event::UpdateStaged, T0),
                (Event::Broadcasted { told: 2 }, T0),
            ],
        );
        assert_eq!(s, State::RebootDelay);
        assert_eq!(
            a,
            vec![
                A::SetState(CoordState::Running),
                A::SetState(CoordState::RebootPlanned),
                A::Broadcast,
                A::WakeAfter(Duration::minutes(5))
            ]
        );
        let (s, a) = step(&p, s, Event::Tick, t(T0));
        assert_eq!(s, State::Rebooting);
        assert_eq!(a, vec![A::SetState(CoordState::Rebooting), A::Reboot]);
    }

    #[test]
    fn nobody_told_reboots_at_once() {
        let p = Policy::new(Mode::Uncoordinated, None);
        let (s, _) = run(
            &p,
            &[
                (Event::Start, T0),
                (Event::UpdateStaged, T0),
                (Event::Broadcasted { told: 0 }, T0),
            ],
        );
        assert_eq!(s, State::Rebooting);
    }

    #[test]
    fn off_never_reboots() {
        let p = Policy::new(Mode::Off, None);
        let (s, a) = run(
            &p,
            &[
                (Event::Start, T0),
                (Event::UpdateStaged, T0),
                (Event::Tick, T0),
            ],
        );
        assert_eq!(s, State::Idle);
        assert_eq!(a, vec![A::SetState(CoordState::Running)]);
    }

    #[test]
    fn etcd_lock_releases_after_good_boot_then_locks() {
        let p = Policy::new(Mode::Coordinated, None);
        let (s, a) = run(
            &p,
            &[
                (Event::Start, T0),
                (Event::UpdateStaged, T0), // remembered until released
                (Event::BootGood, T0),
                (Event::UnlockFailed("etcd down".into()), T0),
                (Event::Tick, T0),
                (Event::UnlockFailed("etcd down".into()), T0),
                (Event::Tick, T0),
                (Event::Unlocked, T0),
                (Event::LockFailed("semaphore is at 0".into()), T0),
                (Event::Tick, T0),
                (Event::Locked, T0),
            ],
        );
        assert_eq!(s, State::Broadcasting);
        assert_eq!(
            a,
            vec![
                A::SetState(CoordState::Starting),
                A::Unlock,
                A::WakeAfter(Duration::seconds(5)),
                A::Unlock,
                A::WakeAfter(Duration::seconds(10)),
                A::Unlock,
                A::SetState(CoordState::Running),
                A::SetState(CoordState::RebootPlanned),
                A::Lock,
                A::WakeAfter(Duration::seconds(30)),
                A::Lock,
                A::Broadcast,
            ]
        );
    }

    #[test]
    fn unlock_backoff_doubles_to_five_minutes() {
        let p = Policy::new(Mode::Coordinated, None);
        let d: Vec<i64> = (0..9).map(|i| p.unlock_delay(i).num_seconds()).collect();
        assert_eq!(d, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn window_gates_lock_and_reboot() {
        let w =
            Window::from_config(Some("Sat 14:00"), Some("1h"), parse_zone("UTC").unwrap()).unwrap();
        let p = Policy::new(Mode::Coordinated, w);
        // 2026-01-10 is a Saturday; at 12:00 the window opens in 2 h.
        let mut s = State::Idle;
        let (ns, a) = step(&p, s, Event::UpdateStaged, t(T0));
        assert_eq!(ns, State::WaitWindowLock);
        assert_eq!(
            a,
            vec![
                A::SetState(CoordState::RebootPlanned),
                A::WakeAfter(Duration::hours(2))
            ]
        );
        s = ns;
        let (ns, a) = step(&p, s, Event::Tick, t("2026-01-10T14:00:00Z"));
        assert_eq!(
            (ns.clone(), a),
            (
                State::Locking { attempt: 0 },
                vec![A::SetState(CoordState::RebootPlanned), A::Lock]
            )
        );
        // The lock arrives after the window closed: wait a week minus the hour.
        let (ns, a) = step(&p, ns, Event::Locked, t("2026-01-10T15:00:00Z"));
        assert_eq!(ns, State::WaitWindowReboot);
        assert_eq!(
            a,
            vec![A::WakeAfter(Duration::days(7) - Duration::hours(1))]
        );
        let (ns, a) = step(&p, ns, Event::Tick, t("2026-01-17T14:00:01Z"));
        assert_eq!((ns, a), (State::Broadcasting, vec![A::Broadcast]));
        // A retry tick outside the window goes back to waiting instead of locking.
        let (ns, a) = step(
            &p,
            State::Locking { attempt: 3 },
            Event::Tick,
            t("2026-01-10T16:00:00Z"),
        );
        assert_eq!(ns, State::WaitWindowLock);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn stray_events_change_nothing() {
        let p = Policy::new(Mode::Coordinated, None);
        for s in [State::Idle, State::Rebooting, State::Broadcasting] {
            for e in [Event::Tick, Event::Locked, Event::Unlocked, Event::BootGood] {
                let (ns, a) = step(&p, s.clone(), e, t(T0));
                assert_eq!((ns, a), (s.clone(), vec![]));
            }
        }
        let (ns, _) = step(&p, State::Rebooting, Event::UpdateStaged, t(T0));
        assert_eq!(ns, State::Rebooting);
    }

    #[test]
    fn strategy_names() {
        for s in ["reboot", "etcd-lock", "off", "best-effort", "fleetlock"] {
            assert_eq!(Strategy::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(Strategy::parse("ETCD-LOCK"), Some(Strategy::EtcdLock));
        assert_eq!(Strategy::parse(""), Some(Strategy::BestEffort));
        assert_eq!(Strategy::parse("sometimes"), None);
    }
}
