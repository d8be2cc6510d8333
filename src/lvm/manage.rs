//! Changing LVM's state for `lvmsync replicate`: snapshots made, tagged, activated and removed,
//! and the facts needed to decide (an LV's snapshots with their tags, a volume group's free
//! space). Everything runs LVM's own tools through [`super::tools::run_tool`]; [`Manage`] lets the
//! replication logic be tested without LVM.

use serde::Deserialize;

use super::tools::run_text as tool;
use crate::error::Error;

/// An LV as `lvmsync replicate` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LvInfo {
    pub vg: String,
    pub name: String,
    pub uuid: String,
    pub size_bytes: u64,
    /// A thin LV (its snapshots are thin snapshots).
    pub thin: bool,
    /// The LV it is a snapshot of (empty when none).
    pub origin: String,
    pub tags: Vec<String>,
    /// Creation time as LVM reports it.
    pub time: String,
    /// `/dev/mapper/...` when active.
    pub dm_path: Option<String>,
    /// A classic snapshot that overflowed.
    pub invalid: bool,
    /// How full a classic snapshot's exception store is, in percent.
    pub fill_percent: Option<f64>,
}

impl LvInfo {
    /// `VG/LV`
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
}

/// What `lvmsync replicate` asks of LVM.
pub trait Manage {
    /// Every LV of the volume group (hidden ones left out).
    fn lvs(&self, vg: &str) -> Result<Vec<LvInfo>, Error>;
    /// Free bytes of the volume group and its extent size.
    fn vg_free(&self, vg: &str) -> Result<(u64, u64), Error>;
    /// Creates a snapshot `name` of `vg/origin` carrying `tag` from its creation on: thin when
    /// `size_bytes` is `None`, else classic with an exception store of that size.
    fn create_snapshot(
        &self,
        vg: &str,
        origin: &str,
        name: &str,
        size_bytes: Option<u64>,
        tag: &str,
    ) -> Result<(), Error>;
    /// Adds and removes tags of one LV in one metadata update.
    fn retag(&self, lv: &str, add: &[&str], del: &[&str]) -> Result<(), Error>;
    /// Activates an LV, a thin snapshot despite its activation-skip flag.
    fn activate(&self, lv: &str) -> Result<(), Error>;
    fn remove(&self, lv: &str) -> Result<(), Error>;
}

/// The real LVM.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLvm;

const FIELDS: &str = "vg_name,lv_name,lv_uuid,lv_size,segtype,origin,lv_tags,lv_time,lv_dm_path,\
lv_kernel_major,lv_attr,snap_percent";

#[derive(Deserialize)]
struct Row {
    vg_name: String,
    lv_name: String,
    #[serde(default)]
    lv_uuid: String,
    lv_size: String,
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    lv_tags: String,
    #[serde(default)]
    lv_time: String,
    #[serde(default)]
    lv_dm_path: String,
    #[serde(default)]
    lv_kernel_major: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    snap_percent: String,
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<Section<T>>,
}

#[derive(Deserialize)]
struct Section<T> {
    #[serde(default = "Vec::new")]
    lv: Vec<T>,
    #[serde(default = "Vec::new")]
    vg: Vec<T>,
}

/// Parses `lvs --reportformat json --units b --nosuffix -o` [`FIELDS`].
pub fn parse_lvs(text: &str) -> Result<Vec<LvInfo>, Error> {
    let report: Report<Row> = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("cannot parse the lvs JSON report: {e}")))?;
    let mut out = Vec::new();
    for r in report.report.into_iter().flat_map(|s| s.lv) {
        if r.lv_name.starts_with('[') {
            continue;
        }
        let size_bytes = r.lv_size.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "{}/{}: unexpected LV size {:?} in the lvs report",
                r.vg_name, r.lv_name, r.lv_size
            ))
        })?;
        let classic_snapshot = r.lv_attr.starts_with(['s', 'S']);
        let active = r
            .lv_kernel_major
            .trim()
            .parse::<i64>()
            .is_ok_and(|m| m >= 0);
        out.push(LvInfo {
            thin: r.segtype == "thin",
            invalid: classic_snapshot && r.lv_attr.chars().nth(4) == Some('I'),
            fill_percent: if classic_snapshot {
                r.snap_percent.trim().parse().ok()
            } else {
                None
            },
            tags: r
                .lv_tags
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            dm_path: (active && !r.lv_dm_path.is_empty()).then_some(r.lv_dm_path),
            vg: r.vg_name,
            name: r.lv_name,
            uuid: r.lv_uuid,
            size_bytes,
            origin: r.origin,
            time: r.lv_time,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct VgRow {
    vg_free: String,
    vg_extent_size: String,
}

/// Parses `vgs --reportformat json --units b --nosuffix -o vg_free,vg_extent_size`.
pub fn parse_vg_free(text: &str, vg: &str) -> Result<(u64, u64), Error> {
    let bad = || Error::Invalid(format!("cannot parse the vgs report of volume group {vg}"));
    let report: Report<VgRow> = serde_json::from_str(text).map_err(|_| bad())?;
    let row = report
        .report
        .into_iter()
        .flat_map(|s| s.vg)
        .next()
        .ok_or_else(bad)?;
    Ok((
        row.vg_free.trim().parse().map_err(|_| bad())?,
        row.vg_extent_size.trim().parse().map_err(|_| bad())?,
    ))
}

impl Manage for SystemLvm {
    fn lvs(&self, vg: &str) -> Result<Vec<LvInfo>, Error> {
        let text = tool(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                FIELDS,
                vg,
            ],
        )?;
        parse_lvs(&text)
    }

    fn vg_free(&self, vg: &str) -> Result<(u64, u64), Error> {
        let text = tool(
            "vgs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_free,vg_extent_size",
                vg,
            ],
        )?;
        parse_vg_free(&text, vg)
    }

    fn create_snapshot(
        &self,
        vg: &str,
        origin: &str,
        name: &str,
        size_bytes: Option<u64>,
        tag: &str,
    ) -> Result<(), Error> {
        let source = format!("{vg}/{origin}");
        let size = size_bytes.map(|b| format!("{b}b"));
        let mut args = vec!["-y", "-s", "-n", name, "--addtag", tag];
        if let Some(size) = &size {
            args.extend(["-L", size]);
        }
        args.push(&source);
        tool("lvcreate", &args).map(drop)
    }

    fn retag(&self, lv: &str, add: &[&str], del: &[&str]) -> Result<(), Error> {
        let mut args = Vec::new();
        for t in add {
            args.extend(["--addtag", t]);
        }
        for t in del {
            args.extend(["--deltag", t]);
        }
        args.push(lv);
        tool("lvchange", &args).map(drop)
    }

    fn activate(&self, lv: &str) -> Result<(), Error> {
        tool("lvchange", &["-ay", "-K", lv]).map(drop)
    }

    fn remove(&self, lv: &str) -> Result<(), Error> {
        tool("lvremove", &["-y", lv]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvs_rows_parse() {
        let text = r#"{"report":[{"lv":[
          {"vg_name":"vg","lv_name":"lv","lv_uuid":"U1","lv_size":"33554432","segtype":"linear",
           "origin":"","lv_tags":"","lv_time":"2024-01-01 10:00:00 +0000",
           "lv_dm_path":"/dev/mapper/vg-lv","lv_kernel_major":"253","lv_attr":"owi-aos---",
           "snap_percent":""},
          {"vg_name":"vg","lv_name":"lv.lvmsync.1","lv_uuid":"U2","lv_size":"33554432",
           "segtype":"linear","origin":"lv","lv_tags":"lvmsync-base:a,other",
           "lv_time":"2024-01-01 10:00:01 +0000","lv_dm_path":"/dev/mapper/vg-lv.lvmsync.1",
           "lv_kernel_major":"253","lv_attr":"swi-I-s---","snap_percent":"100.00"},
          {"vg_name":"vg","lv_name":"[pool_tmeta]","lv_size":"4194304","lv_kernel_major":"-1"},
          {"vg_name":"vg","lv_name":"t","lv_size":"1048576","segtype":"thin","origin":"o",
           "lv_dm_path":"/dev/mapper/vg-t","lv_kernel_major":"-1","lv_attr":"Vwi---tz-k"}
        ]}]}"#;
        let lvs = parse_lvs(text).unwrap();
        assert_eq!(lvs.len(), 3);
        assert_eq!(lvs[0].dm_path.as_deref(), Some("/dev/mapper/vg-lv"));
        assert!(!lvs[0].invalid);
        assert_eq!(lvs[1].tags, ["lvmsync-base:a", "other"]);
        assert!(lvs[1].invalid);
        assert_eq!(lvs[1].fill_percent, Some(100.0));
        assert!(lvs[2].thin);
        assert_eq!(lvs[2].dm_path, None, "inactive");
        assert_eq!(lvs[2].fill_percent, None);
    }

    #[test]
    fn vg_free_parses() {
        let text = r#"{"report":[{"vg":[{"vg_free":"100663296","vg_extent_size":"4194304"}]}]}"#;
        assert_eq!(parse_vg_free(text, "vg").unwrap(), (100663296, 4194304));
        assert!(parse_vg_free(r#"{"report":[{"vg":[]}]}"#, "vg").is_err());
    }
}
