//! The ChromeOS / Flatcar slot attribute bits inside a GPT entry's 64-bit attribute field.
//!
//! priority = bits 48–51, tries = bits 52–55, successful = bit 56. Every other bit belongs to
//! someone else (UEFI, the OS) and is carried through untouched.

use std::fmt;

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_BIT: u32 = 56;
const NIBBLE: u64 = 0xF;

/// Mask of every bit this module owns.
pub const SLOT_BITS_MASK: u64 =
    (NIBBLE << PRIORITY_SHIFT) | (NIBBLE << TRIES_SHIFT) | (1 << SUCCESSFUL_BIT);

/// The boot-slot attributes of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SlotAttrs {
    /// 0 (never boot) to 15.
    pub priority: u8,
    /// Boot attempts left before the slot is skipped, 0 to 15.
    pub tries: u8,
    /// Set once a boot of this slot was confirmed good.
    pub successful: bool,
}

impl SlotAttrs {
    /// Largest value a priority or tries nibble holds.
    pub const MAX: u8 = 15;

    /// What a freshly written slot gets before its first boot (Flatcar's postinstall).
    pub const STAGED: SlotAttrs = SlotAttrs {
        priority: 0,
        tries: 1,
        successful: false,
    };

    /// Reads the slot bits out of a full attribute word.
    pub fn from_raw(raw: u64) -> Self {
        SlotAttrs {
            priority: ((raw >> PRIORITY_SHIFT) & NIBBLE) as u8,
            tries: ((raw >> TRIES_SHIFT) & NIBBLE) as u8,
            successful: (raw >> SUCCESSFUL_BIT) & 1 == 1,
        }
    }

    /// Writes the slot bits into `raw`, leaving every other bit as it was.
    /// Values above 15 are clamped (callers validate user input before this).
    pub fn apply_to(self, raw: u64) -> u64 {
        let priority = u64::from(self.priority.min(Self::MAX));
        let tries = u64::from(self.tries.min(Self::MAX));
        (raw & !SLOT_BITS_MASK)
            | (priority << PRIORITY_SHIFT)
            | (tries << TRIES_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_BIT)
    }

    /// gptprio's test of whether a slot may be booted at all.
    pub fn bootable(self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }
}

impl fmt::Display for SlotAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority={} tries={} successful={}",
            self.priority,
            self.tries,
            u8::from(self.successful)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bit_positions_match_cgpt() {
        let a = SlotAttrs {
            priority: 2,
            tries: 1,
            successful: true,
        };
        assert_eq!(a.apply_to(0), (2u64 << 48) | (1u64 << 52) | (1u64 << 56));
    }

    proptest! {
        #[test]
        fn round_trip_preserves_foreign_bits(raw: u64, p in 0u8..=15, t in 0u8..=15, s: bool) {
            let a = SlotAttrs { priority: p, tries: t, successful: s };
            let out = a.apply_to(raw);
            prop_assert_eq!(SlotAttrs::from_raw(out), a);
            prop_assert_eq!(out & !SLOT_BITS_MASK, raw & !SLOT_BITS_MASK);
        }
    }
}
