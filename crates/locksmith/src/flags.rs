//! Go `flag`-package style arguments: `-name value`, `-name=value`, `--name value`,
//! `--name=value`; boolean flags take no value. Flags may appear before or after the
//! subcommand; `--` ends them.

use std::collections::BTreeMap;

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub values: BTreeMap<String, String>,
    pub positional: Vec<String>,
}

/// Errors in the Go flag package's words.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
}

/// Parses `args` (without the program name). `with_value` lists flags that take a value,
/// `booleans` those that do not.
pub fn parse(args: &[String], with_value: &[&str], booleans: &[&str]) -> Result<Parsed, FlagError> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.positional.extend(args[i..].iter().cloned());
            break;
        }
        let body = match a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            Some(b) if !b.is_empty() && a != "-" => b,
            _ => {
                p.positional.push(a.clone());
                continue;
            }
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if booleans.contains(&name) {
            p.values
                .insert(name.to_string(), inline.unwrap_or_else(|| "true".into()));
        } else if with_value.contains(&name) {
            let v = match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| FlagError::MissingValue(name.to_string()))?;
                    i += 1;
                    v.clone()
                }
            };
            p.values.insert(name.to_string(), v);
        } else {
            return Err(FlagError::Unknown(name.to_string()));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_style() {
        let p = parse(
            &s(&["-endpoint", "http://a", "--group=web", "lock", "-h", "id1"]),
            &["endpoint", "group"],
            &["h"],
        )
        .unwrap();
        assert_eq!(p.values["endpoint"], "http://a");
        assert_eq!(p.values["group"], "web");
        assert_eq!(p.values["h"], "true");
        assert_eq!(p.positional, s(&["lock", "id1"]));
        assert_eq!(
            parse(&s(&["-nope"]), &[], &[]),
            Err(FlagError::Unknown("nope".into()))
        );
        assert_eq!(
            parse(&s(&["-group"]), &["group"], &[]),
            Err(FlagError::MissingValue("group".into()))
        );
        let p = parse(&s(&["--", "-x"]), &[], &[]).unwrap();
        assert_eq!(p.positional, s(&["-x"]));
    }
}
