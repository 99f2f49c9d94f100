//! Version ordering for OS versions like `3602.2.0` (and `3602.2.0+build`).

use std::cmp::Ordering;

/// Compares dotted versions component by component: numeric parts numerically,
/// others as text; a missing component sorts before a present one
/// (`1.2` < `1.2.0`). Anything after `+` is build metadata and ignored.
pub fn compare(a: &str, b: &str) -> Ordering {
    let strip = |s: &str| s.split('+').next().unwrap_or("").trim().to_owned();
    let (a, b) = (strip(a), strip(b));
    let mut ai = a.split(['.', '-']);
    let mut bi = b.split(['.', '-']);
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Greater,
                    (Err(_), Ok(_)) => Ordering::Less,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

pub fn newer(a: &str, than: &str) -> bool {
    compare(a, than) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert!(newer("3732.0.0", "3602.2.0"));
        assert!(newer("3602.10.0", "3602.9.9"));
        assert!(!newer("3602.2.0", "3602.2.0"));
        assert_eq!(compare("3602.2.0+abc", "3602.2.0"), Ordering::Equal);
        assert!(newer("1.2.0", "1.2"));
        assert!(newer("1.2.0", "1.2.0-rc1") || newer("1.2.0-rc1", "1.2.0"));
    }
}
