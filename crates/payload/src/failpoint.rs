//! Fail-points at the installer's durability points (compiled in with `--features failpoints`).

/// Every fail-point name, in the order an install passes them.
pub const FAIL_POINTS: &[&str] = &[
    "payload::head_clear::before_sync",
    "payload::state::before_rename",
    "payload::checkpoint::before_target_sync",
    "payload::checkpoint::before_state_write",
    "payload::checkpoint::after_state_write",
    "payload::finish::before_data_sync",
    "payload::finish::before_head_write",
    "payload::finish::before_head_sync",
    "payload::finish::before_state_clear",
];

/// Returns `Err(PayloadError::Injected)` from the enclosing function when the named
/// fail-point is configured to `return`; a no-op without the `failpoints` feature.
macro_rules! fail_here {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err($crate::error::PayloadError::Injected(
            $name.to_string()
        )));
    };
}
pub(crate) use fail_here;
