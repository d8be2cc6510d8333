//! device-mapper facts: device numbers, table and status lines.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A block device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Invalid(format!("{s:?} is not a major:minor device number"));
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        Ok(DevNum {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

/// One target line of `dmsetup table` or `dmsetup status`: `START LEN TYPE ARGS...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLine {
    pub start: u64,
    pub sectors: u64,
    pub target: String,
    pub args: Vec<String>,
}

/// Parses the output of `dmsetup table|status` for one device. A `NAME: ` prefix (as printed
/// when listing every device) is accepted and dropped.
pub fn parse_targets(text: &str) -> Result<Vec<TargetLine>, Error> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_some_and(|w| w.ends_with(':')) {
            words.next();
        }
        let bad = || Error::Invalid(format!("unexpected device-mapper line {line:?}"));
        let start = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let sectors = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let target = words.next().ok_or_else(bad)?.to_string();
        out.push(TargetLine {
            start,
            sectors,
            target,
            args: words.map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// The single target of a device whose table must consist of exactly one target.
pub fn single_target(text: &str, what: &str) -> Result<TargetLine, Error> {
    let mut targets = parse_targets(text)?;
    match targets.len() {
        1 => Ok(targets.remove(0)),
        0 => Err(Error::Invalid(format!(
            "{what}: device-mapper table is empty"
        ))),
        n => Err(Error::Invalid(format!(
            "{what}: expected one device-mapper target, found {n}"
        ))),
    }
}

/// `snapshot <origin> <cow> P|N <chunk sectors>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTable {
    pub origin_real: DevNum,
    pub cow: DevNum,
    pub chunk_sectors: u64,
}

pub fn parse_snapshot_table(t: &TargetLine, what: &str) -> Result<SnapshotTable, Error> {
    let bad = || {
        Error::Invalid(format!(
            "{what}: unexpected snapshot table \"{} {}\"",
            t.target,
            t.args.join(" ")
        ))
    };
    if t.target != "snapshot" || t.args.len() < 4 {
        return Err(bad());
    }
    if !t.args[2].starts_with('P') {
        return Err(Error::Invalid(format!(
            "{what}: the snapshot's exception store is not persistent ({}), nothing to read",
            t.args[2]
        )));
    }
    Ok(SnapshotTable {
        origin_real: t.args[0].parse()?,
        cow: t.args[1].parse()?,
        chunk_sectors: t.args[3].parse().map_err(|_| bad())?,
    })
}

/// `thin <pool dev> <dev id> [<external origin dev>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTable {
    pub pool: DevNum,
    pub dev_id: u64,
}

pub fn parse_thin_table(t: &TargetLine, what: &str) -> Result<ThinTable, Error> {
    if t.target != "thin" || t.args.len() < 2 {
        return Err(Error::Invalid(format!(
            "{what}: unexpected thin table \"{} {}\"",
            t.target,
            t.args.join(" ")
        )));
    }
    Ok(ThinTable {
        pool: t.args[0].parse()?,
        dev_id: t.args[1]
            .parse()
            .map_err(|_| Error::Invalid(format!("{what}: bad thin device id {:?}", t.args[1])))?,
    })
}

/// `thin-pool <metadata dev> <data dev> <block sectors> <low water mark> ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTable {
    pub metadata: DevNum,
    pub data: DevNum,
    pub block_sectors: u64,
}

pub fn parse_pool_table(t: &TargetLine, what: &str) -> Result<PoolTable, Error> {
    let bad = || {
        Error::Invalid(format!(
            "{what}: unexpected thin-pool table \"{} {}\"",
            t.target,
            t.args.join(" ")
        ))
    };
    if t.target != "thin-pool" || t.args.len() < 3 {
        return Err(bad());
    }
    Ok(PoolTable {
        metadata: t.args[0].parse()?,
        data: t.args[1].parse()?,
        block_sectors: t.args[2].parse().map_err(|_| bad())?,
    })
}

/// Splits a device-mapper name made by LVM, `VG-LV[-layer]` with `-` in names doubled, into
/// (VG, rest). `None` when there is no single `-`.
pub fn split_lvm_dm_name(name: &str) -> Option<(String, String)> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' {
            if bytes.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let vg = name[..i].replace("--", "-");
            let rest = name[i + 1..].to_string();
            return (!vg.is_empty()).then_some((vg, rest));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines() {
        let t = parse_targets("vg0-snap: 0 131072 snapshot 253:1 253:2 P 8\n").unwrap();
        assert_eq!(t.len(), 1);
        let s = parse_snapshot_table(&t[0], "x").unwrap();
        assert_eq!(
            s,
            SnapshotTable {
                origin_real: DevNum {
                    major: 253,
                    minor: 1
                },
                cow: DevNum {
                    major: 253,
                    minor: 2
                },
                chunk_sectors: 8
            }
        );
        let t = single_target("0 131072 thin-pool 253:4 253:5 128 0 0 \n", "p").unwrap();
        let p = parse_pool_table(&t, "p").unwrap();
        assert_eq!(p.block_sectors, 128);
        assert_eq!(p.metadata.to_string(), "253:4");
        let t = single_target("0 262144 thin 253:6 2", "t").unwrap();
        assert_eq!(parse_thin_table(&t, "t").unwrap().dev_id, 2);
        assert!(parse_snapshot_table(&t, "t").is_err());
        assert!(single_target("", "e").is_err());
        assert!(single_target("0 8 linear 8:0 0\n8 8 linear 8:1 0\n", "two").is_err());
        assert!(parse_targets("0 x linear").is_err());
        let t = single_target("0 131072 snapshot 253:1 253:2 N 8", "n").unwrap();
        assert!(parse_snapshot_table(&t, "n").is_err());
    }

    #[test]
    fn lvm_dm_names() {
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(split_lvm_dm_name("vg0-snap"), s("vg0", "snap"));
        assert_eq!(
            split_lvm_dm_name("my--vg-data--lv-cow"),
            s("my-vg", "data--lv-cow")
        );
        assert_eq!(split_lvm_dm_name("vg0-pool-tpool"), s("vg0", "pool-tpool"));
        assert_eq!(split_lvm_dm_name("nodash"), None);
        assert_eq!(split_lvm_dm_name("-x"), None);
    }
}
