//! Which payload operations a client applies: the `fastpatch_payload_ops` attribute of a
//! request's `<app>`, defined once for the engine that sends it and the server that reads it.
//!
//! Stock Flatcar clients (update_engine, ue-rs) send no such attribute and apply only
//! `REPLACE` and `REPLACE_BZ`; a server must not offer them a payload that uses anything else
//! (zstd, `ZERO`, delta operations), or they download it and fail.

use std::collections::BTreeSet;
use std::fmt;

/// The `<app>` attribute: operation names as in `update_metadata.proto`, comma-separated.
pub const PAYLOAD_OPS_ATTR: &str = "fastpatch_payload_ops";

/// What a client without the attribute applies (stock Flatcar update_engine and ue-rs).
pub const STOCK_FLATCAR_OPS: [&str; 2] = ["REPLACE", "REPLACE_BZ"];

/// A set of operation names (`REPLACE_ZSTD`, `SOURCE_COPY`, …): what a payload uses or what a
/// client applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PayloadOps(BTreeSet<String>);

impl PayloadOps {
    pub fn new<I, S>(names: I) -> PayloadOps
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        PayloadOps(
            names
                .into_iter()
                .map(|n| n.as_ref().trim().to_ascii_uppercase())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    /// What every Flatcar client applies.
    pub fn stock_flatcar() -> PayloadOps {
        PayloadOps::new(STOCK_FLATCAR_OPS)
    }

    /// The attribute's (or a stored column's) comma-separated form; names are trimmed and
    /// upper-cased, empty entries dropped.
    pub fn parse(list: &str) -> PayloadOps {
        PayloadOps::new(list.split(','))
    }

    /// Whether a client applying `self` can apply a payload that uses `needed`.
    pub fn covers(&self, needed: &PayloadOps) -> bool {
        needed.0.is_subset(&self.0)
    }

    /// The operations of `needed` that `self` lacks, in name order.
    pub fn missing<'a>(&self, needed: &'a PayloadOps) -> Vec<&'a str> {
        needed
            .0
            .iter()
            .filter(|n| !self.0.contains(*n))
            .map(String::as_str)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl fmt::Display for PayloadOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for n in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(n)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_and_round_trips() {
        let ops = PayloadOps::parse(" replace_zstd, REPLACE,,REPLACE_BZ ");
        assert_eq!(ops.to_string(), "REPLACE,REPLACE_BZ,REPLACE_ZSTD");
        assert_eq!(PayloadOps::parse(&ops.to_string()), ops);
        assert!(PayloadOps::parse("").is_empty());
    }

    #[test]
    fn a_stock_client_covers_a_bzip2_payload_but_not_a_zstd_one() {
        let stock = PayloadOps::stock_flatcar();
        assert!(stock.covers(&PayloadOps::parse("REPLACE_BZ")));
        assert!(stock.covers(&PayloadOps::parse("REPLACE,REPLACE_BZ")));
        let zstd = PayloadOps::parse("REPLACE,REPLACE_ZSTD");
        assert!(!stock.covers(&zstd));
        assert_eq!(stock.missing(&zstd), vec!["REPLACE_ZSTD"]);
        let all = PayloadOps::parse("REPLACE,REPLACE_BZ,REPLACE_ZSTD,ZERO");
        assert!(all.covers(&zstd));
        assert!(all.missing(&zstd).is_empty());
    }
}
