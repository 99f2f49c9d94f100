//! The boot choice (Flatcar GRUB's `gptprio.next`) and cgpt's `prioritize`, as pure functions
//! over a list of candidate slots. No I/O here: the disk module applies the results.

use crate::attrs::SlotAttrs;

/// One partition as the boot choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// 1-based partition number.
    pub index: u32,
    pub attrs: SlotAttrs,
}

/// What `next` decided: which slot boots, and the attributes to write back before booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootChoice {
    pub index: u32,
    /// The attributes before the choice.
    pub before: SlotAttrs,
    /// The attributes to write (tries decremented when it was > 0).
    pub after: SlotAttrs,
}

impl BootChoice {
    /// True when the choice changes the table (tries had to be decremented).
    pub fn needs_write(&self) -> bool {
        self.before != self.after
    }
}

/// gptprio: among the candidates (USR partitions, in table order) that have tries left or are
/// marked successful, take the strictly highest priority above 0; the first one wins a tie.
/// A chosen slot with tries > 0 loses one try, which the caller writes back before booting.
pub fn choose_next(candidates: &[Candidate]) -> Option<BootChoice> {
    let mut best: Option<Candidate> = None;
    for c in candidates {
        if !c.attrs.bootable() {
            continue;
        }
        if best.is_none_or(|b| c.attrs.priority > b.attrs.priority) {
            best = Some(*c);
        }
    }
    best.map(|c| {
        let mut after = c.attrs;
        if after.tries > 0 {
            after.tries -= 1;
        }
        BootChoice {
            index: c.index,
            before: c.attrs,
            after,
        }
    })
}

/// cgpt's `prioritize`: the target becomes the only slot in the top rank; the other ranks keep
/// their order and are renumbered downward from there, never below 1; slots at priority 0 stay
/// at 0. The top is `max_priority` when given, else the number of non-zero ranks (at most 15).
/// Returns the new priority of every candidate, in the same order.
pub fn prioritize(candidates: &[Candidate], target: u32, max_priority: Option<u8>) -> Vec<u8> {
    // Distinct priorities, highest first; the target forms a rank of its own above all.
    let mut ranks: Vec<u8> = candidates
        .iter()
        .filter(|c| c.index != target)
        .map(|c| c.attrs.priority)
        .collect();
    ranks.sort_unstable_by(|a, b| b.cmp(a));
    ranks.dedup();
    // A trailing rank of zeros is never raised.
    let zero_rank_dropped = ranks.last() == Some(&0);
    if zero_rank_dropped {
        ranks.pop();
    }
    let rank_count = ranks.len() + 1; // + the target's own rank
    let top = match max_priority {
        Some(p) if p > 0 => p.min(SlotAttrs::MAX),
        _ => rank_count.min(usize::from(SlotAttrs::MAX)) as u8,
    };
    // New value of each old priority, walking down from `top`.
    let mut new_of_rank = Vec::with_capacity(ranks.len());
    let mut next = top;
    for old in &ranks {
        next = if next > 1 { next - 1 } else { 1 };
        new_of_rank.push((*old, next));
    }
    candidates
        .iter()
        .map(|c| {
            if c.index == target {
                top
            } else {
                new_of_rank
                    .iter()
                    .find(|(old, _)| *old == c.attrs.priority)
                    .map(|(_, new)| *new)
                    .unwrap_or(0) // only the dropped zero rank is missing
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(index: u32, priority: u8, tries: u8, successful: bool) -> Candidate {
        Candidate {
            index,
            attrs: SlotAttrs {
                priority,
                tries,
                successful,
            },
        }
    }

    #[test]
    fn table_of_cases() {
        // (description, candidates, expected index, expected tries after)
        type Case = (&'static str, Vec<Candidate>, Option<(u32, u8)>);
        let cases: Vec<Case> = vec![
            (
                "fresh disk: A good",
                vec![c(3, 1, 0, true), c(4, 0, 0, false)],
                Some((3, 0)),
            ),
            (
                "B staged above A",
                vec![c(3, 1, 0, true), c(4, 2, 1, false)],
                Some((4, 0)),
            ),
            (
                "B tried and failed",
                vec![c(3, 1, 0, true), c(4, 2, 0, false)],
                Some((3, 0)),
            ),
            (
                "B good after update",
                vec![c(3, 1, 0, true), c(4, 2, 0, true)],
                Some((4, 0)),
            ),
            (
                "tie: first entry wins",
                vec![c(3, 2, 0, true), c(4, 2, 0, true)],
                Some((3, 0)),
            ),
            (
                "priority 0 never boots",
                vec![c(3, 0, 5, true), c(4, 0, 1, false)],
                None,
            ),
            (
                "nothing bootable",
                vec![c(3, 1, 0, false), c(4, 2, 0, false)],
                None,
            ),
            (
                "several tries left",
                vec![c(3, 1, 0, true), c(4, 5, 3, false)],
                Some((4, 2)),
            ),
            (
                "good and tries both",
                vec![c(3, 1, 0, true), c(4, 3, 2, true)],
                Some((4, 1)),
            ),
            (
                "lower staged slot loses",
                vec![c(3, 3, 0, true), c(4, 2, 1, false)],
                Some((3, 0)),
            ),
            ("empty", vec![], None),
        ];
        for (what, cands, want) in cases {
            let got = choose_next(&cands).map(|b| (b.index, b.after.tries));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn prioritize_like_cgpt() {
        // Staging B on a fresh disk: B on top, A keeps a fallback priority.
        assert_eq!(
            prioritize(&[c(3, 1, 0, true), c(4, 0, 0, false)], 4, None),
            vec![1, 2]
        );
        // Prioritizing the top slot again changes nothing.
        assert_eq!(
            prioritize(&[c(3, 1, 0, true), c(4, 2, 0, true)], 4, None),
            vec![1, 2]
        );
        // Swapping back.
        assert_eq!(
            prioritize(&[c(3, 1, 0, true), c(4, 2, 0, true)], 3, None),
            vec![2, 1]
        );
        // An explicit max.
        assert_eq!(
            prioritize(&[c(3, 1, 0, true), c(4, 2, 0, true)], 3, Some(15)),
            vec![15, 14]
        );
        // Squashed at 1 when the max is low; zeros stay zero.
        assert_eq!(
            prioritize(
                &[
                    c(1, 5, 0, true),
                    c(2, 4, 0, true),
                    c(3, 0, 0, false),
                    c(4, 1, 1, false)
                ],
                4,
                Some(2)
            ),
            vec![1, 1, 0, 2]
        );
        // Equal priorities stay equal.
        assert_eq!(
            prioritize(
                &[c(1, 3, 0, true), c(2, 3, 0, true), c(4, 1, 0, true)],
                4,
                None
            ),
            vec![1, 1, 2]
        );
    }

    /// A deliberately naive restatement of the rule, to check `choose_next` against.
    fn reference_choice(cands: &[Candidate]) -> Option<(u32, u8)> {
        let mut best_prio = 0;
        let mut best = None;
        for cand in cands {
            let a = cand.attrs;
            let eligible = a.tries > 0 || a.successful;
            if eligible && a.priority > best_prio {
                best_prio = a.priority;
                best = Some((cand.index, if a.tries > 0 { a.tries - 1 } else { 0 }));
            }
        }
        best
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0u8..=15, 0u8..=15, any::<bool>()), 0..6).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (p, t, s))| c(i as u32 + 1, p, t, s))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn choice_matches_reference(cands in arb_candidates()) {
            let got = choose_next(&cands).map(|b| (b.index, b.after.tries));
            prop_assert_eq!(got, reference_choice(&cands));
        }

        #[test]
        fn prioritize_puts_target_alone_on_top(cands in arb_candidates(), pick: prop::sample::Index) {
            prop_assume!(!cands.is_empty());
            let target = cands[pick.index(cands.len())].index;
            let new = prioritize(&cands, target, None);
            let top = new[cands.iter().position(|c| c.index == target).unwrap()];
            prop_assert!(top >= 1);
            for (cand, p) in cands.iter().zip(&new) {
                if cand.index == target { continue; }
                // Others are strictly below the target unless squashed at 1, zeros stay zero.
                prop_assert!(*p < top || (top == 1 && *p == 1));
                if cand.attrs.priority == 0 { prop_assert_eq!(*p, 0); } else { prop_assert!(*p >= 1); }
            }
            // Relative order of the others is kept.
            for (a, pa) in cands.iter().zip(&new) {
                for (b, pb) in cands.iter().zip(&new) {
                    if a.index != target && b.index != target && a.attrs.priority > b.attrs.priority {
                        prop_assert!(pa >= pb);
                    }
                }
            }
        }
    }
}
