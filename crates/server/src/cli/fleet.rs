//! The fleet commands: channels and promotion, groups (policies, halts), floors, instances.

use anyhow::{Context, Result};

use super::{open, print_group, ChannelCmd, DbArgs, FloorCmd, GroupCmd};
use crate::store::{Group, InstanceFilter};

/// `promote --from A --to B`.
pub async fn promote(db: &DbArgs, app: &str, now: i64, from: &str, to: &str) -> Result<()> {
    let store = open(db).await?;
    let v = store.promote(app, from, to, now).await?;
    println!("channel {to} now offers {v} (from {from})");
    Ok(())
}

/// `channel list|set|history`.
pub async fn channel(db: &DbArgs, app: &str, now: i64, cmd: ChannelCmd) -> Result<()> {
    let store = open(db).await?;
    match cmd {
        ChannelCmd::List => {
            for c in store.channels(app).await? {
                println!("{:<12} {}", c.name, c.version.as_deref().unwrap_or("-"));
            }
        }
        ChannelCmd::Set { name, version } => {
            store.set_channel(app, &name, &version, now).await?;
            println!("channel {name} now offers {version}");
        }
        ChannelCmd::History { name } => {
            for (v, at) in store.channel_history(app, &name, 50).await? {
                println!(
                    "{} {v}",
                    chrono::DateTime::from_timestamp(at, 0)
                        .unwrap_or_default()
                        .to_rfc3339()
                );
            }
        }
    }
    Ok(())
}

/// `group list|show|set|halt|resume`.
pub async fn group(db: &DbArgs, app: &str, now: i64, cmd: GroupCmd) -> Result<()> {
    let store = open(db).await?;
    match cmd {
        GroupCmd::List => {
            for g in store.groups(app).await? {
                print_group(&g);
            }
        }
        GroupCmd::Show { name } => {
            let g = store
                .group(app, &name)
                .await?
                .with_context(|| format!("no group {name}"))?;
            print_group(&g);
            for (s, n) in store.status_counts(app, &name).await? {
                println!("  {s:<12} {n}");
            }
        }
        GroupCmd::Set(set) => {
            let mut g = match store.group(app, &set.name).await? {
                Some(g) => g,
                None => Group::new(app, &set.name, set.channel.as_deref().unwrap_or(&set.name)),
            };
            set.apply(&mut g)?;
            print_group(&store.set_group_policy(&g, now).await?);
        }
        GroupCmd::Halt { name, reason } => {
            store
                .set_halted(
                    app,
                    &name,
                    true,
                    Some(reason.as_deref().unwrap_or("halted by an operator")),
                    now,
                )
                .await?;
            println!("group {name} halted");
        }
        GroupCmd::Resume { name } => {
            store.set_halted(app, &name, false, None, now).await?;
            println!("group {name} resumed");
        }
    }
    Ok(())
}

/// `floor list|add|remove`: prints the floors after the change.
pub async fn floor(db: &DbArgs, app: &str, now: i64, cmd: FloorCmd) -> Result<()> {
    let store = open(db).await?;
    match cmd {
        FloorCmd::List => {}
        FloorCmd::Add { version } => {
            if !store
                .add_floor(app, &version, "by an operator", now)
                .await?
            {
                eprintln!("{version} was a floor already");
            }
        }
        FloorCmd::Remove { version } => {
            if !store.remove_floor(app, &version, now).await? {
                eprintln!("{version} was not a floor");
            }
        }
    }
    for f in store.floors(app).await? {
        println!("{f}");
    }
    Ok(())
}

/// The hidden `seed-instances` (benchmarks, dashboard scale tests).
pub async fn seed_instances(
    db: &DbArgs,
    app: &str,
    now: i64,
    count: u64,
    group: &str,
    version: &str,
    prefix: &str,
) -> Result<()> {
    let store = open(db).await?;
    let n = store
        .seed_instances(app, group, prefix, count, version, now)
        .await?;
    println!("registered {n} instances in group {group}");
    Ok(())
}

/// `instances`: one keyset page.
pub async fn instances(db: &DbArgs, filter: &InstanceFilter, now: i64) -> Result<()> {
    let store = open(db).await?;
    for r in &store.list_instances(filter, now).await? {
        println!(
            "{:<34} {:<10} {:<12} {:<12} {:<8} {}",
            r.machine_id,
            r.group_name,
            r.version,
            r.status,
            r.arch,
            r.alias.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
