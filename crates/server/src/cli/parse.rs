//! Pure helpers of the command line: option parsing and group printing.

use anyhow::{bail, Context, Result};

use super::GroupSet;
use crate::store::{ExtraFile, Group};

/// `NAME:SIZE:SHA1:SHA256` → an extra file.
pub fn parse_extra_file(s: &str) -> Result<ExtraFile> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, size, sha1, sha256] = parts[..] else {
        bail!("extra file {s:?}: want NAME:SIZE:SHA1:SHA256");
    };
    Ok(ExtraFile {
        name: name.to_owned(),
        size: size
            .parse()
            .with_context(|| format!("extra file {name:?}: size {size:?}"))?,
        sha1: sha1.to_owned(),
        sha256: sha256.to_owned(),
    })
}

pub fn opt_limit(s: &str) -> Result<Option<i64>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    Ok(Some(s.parse().with_context(|| {
        format!("{s:?} is not a number or \"none\"")
    })?))
}

pub fn parse_days(s: &str) -> Result<i64> {
    let mut mask = 0i64;
    for d in s.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        let bit = match &d[..d.len().min(3)] {
            "mon" => 0,
            "tue" => 1,
            "wed" => 2,
            "thu" => 3,
            "fri" => 4,
            "sat" => 5,
            "sun" => 6,
            _ => bail!("unknown day {d:?}"),
        };
        mask |= 1 << bit;
    }
    Ok(mask)
}

pub fn parse_hours(s: &str) -> Result<(i64, i64)> {
    let minute = |t: &str| -> Result<i64> {
        let (h, m) = t.trim().split_once(':').context("want HH:MM")?;
        let (h, m): (i64, i64) = (h.parse()?, m.parse()?);
        if !(0..=24).contains(&h) || !(0..60).contains(&m) || h * 60 + m > 1440 {
            bail!("{t:?} is not a time of day");
        }
        Ok(h * 60 + m)
    };
    let (a, b) = s.split_once('-').context("want HH:MM-HH:MM")?;
    Ok((minute(a)?, minute(b)?))
}

impl GroupSet {
    pub fn apply(&self, g: &mut Group) -> Result<()> {
        if let Some(c) = &self.channel {
            g.channel = c.clone();
        }
        if let Some(v) = self.enabled {
            g.updates_enabled = v;
        }
        if let Some(v) = &self.max_per_period {
            g.max_updates_per_period = opt_limit(v)?;
        }
        if let Some(v) = self.period_secs {
            g.period_secs = v;
        }
        if let Some(v) = &self.max_concurrent {
            g.max_concurrent = opt_limit(v)?;
        }
        if let Some(v) = self.timeout_secs {
            g.update_timeout_secs = v;
        }
        if let Some(v) = self.office_hours {
            g.office_hours = v;
        }
        if let Some(v) = &self.tz {
            g.office_tz = v.clone();
        }
        if let Some(v) = &self.days {
            g.office_days = parse_days(v)?;
        }
        if let Some(v) = &self.hours {
            (g.office_start_minute, g.office_end_minute) = parse_hours(v)?;
        }
        if let Some(v) = self.safe_mode {
            g.safe_mode = v;
        }
        if let Some(v) = self.rollout_secs {
            g.rollout_duration_secs = v;
        }
        Ok(())
    }
}

pub fn print_group(g: &Group) {
    let lim = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
    println!(
        "{:<12} channel={:<8} enabled={} safe_mode={} halted={}{} max_per_period={}/{}s max_concurrent={} timeout={}s office_hours={} rollout={}s",
        g.name,
        g.channel,
        g.updates_enabled,
        g.safe_mode,
        g.halted,
        g.halted_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        lim(g.max_updates_per_period),
        g.period_secs,
        lim(g.max_concurrent),
        g.update_timeout_secs,
        if g.office_hours {
            format!(
                "{} days=0b{:07b} {:02}:{:02}-{:02}:{:02}",
                g.office_tz,
                g.office_days,
                g.office_start_minute / 60,
                g.office_start_minute % 60,
                g.office_end_minute / 60,
                g.office_end_minute % 60
            )
        } else {
            "off".into()
        },
        g.rollout_duration_secs
    );
}
