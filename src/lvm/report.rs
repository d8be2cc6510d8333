//! `lvs --reportformat json` rows.

use serde::Deserialize;

use crate::error::Error;

/// The fields requested from `lvs`; every one exists in LVM 2.03.16.
pub const LVS_FIELDS: &str = "vg_name,lv_name,lv_full_name,lv_attr,lv_size,origin,origin_size,\
pool_lv,thin_id,chunk_size,segtype,lv_dm_path,lv_kernel_major,lv_kernel_minor,lv_merging,\
lv_snapshot_invalid,lv_role,lv_uuid";

/// One LV as reported by `lvs --units b --nosuffix` (all values are strings in LVM's JSON).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LvRow {
    pub vg_name: String,
    /// Hidden LVs are in brackets, `[pool_tmeta]`.
    pub lv_name: String,
    pub lv_full_name: String,
    pub lv_attr: String,
    pub lv_size: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub origin_size: String,
    #[serde(default)]
    pub pool_lv: String,
    #[serde(default)]
    pub thin_id: String,
    #[serde(default)]
    pub chunk_size: String,
    pub segtype: String,
    #[serde(default)]
    pub lv_dm_path: String,
    pub lv_kernel_major: String,
    pub lv_kernel_minor: String,
    #[serde(default)]
    pub lv_merging: String,
    #[serde(default)]
    pub lv_snapshot_invalid: String,
    #[serde(default)]
    pub lv_role: String,
    #[serde(default)]
    pub lv_uuid: String,
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

#[derive(Deserialize)]
struct ReportSection {
    #[serde(default)]
    lv: Vec<LvRow>,
}

pub fn parse_lvs_json(text: &str) -> Result<Vec<LvRow>, Error> {
    let report: Report = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("cannot parse the lvs JSON report: {e}")))?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

impl LvRow {
    /// The LV name without the brackets of hidden LVs.
    pub fn name(&self) -> &str {
        self.lv_name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&self.lv_name)
    }

    /// `major:minor` when active.
    pub fn kernel_dev(&self) -> Option<super::DevNum> {
        let major: i64 = self.lv_kernel_major.trim().parse().ok()?;
        let minor: i64 = self.lv_kernel_minor.trim().parse().ok()?;
        (major >= 0 && minor >= 0).then_some(super::DevNum {
            major: major as u32,
            minor: minor as u32,
        })
    }

    pub fn size_bytes(&self) -> Result<u64, Error> {
        self.lv_size.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "{}: unexpected LV size {:?} in the lvs report",
                self.lv_full_name, self.lv_size
            ))
        })
    }

    pub fn thin_id(&self) -> Result<u64, Error> {
        self.thin_id.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "{}: no thin device id in the lvs report ({:?})",
                self.lv_full_name, self.thin_id
            ))
        })
    }

    /// First character of lv_attr: volume type (`s` snapshot, `S` merging snapshot, `o` origin,
    /// `O` origin with merging snapshot, `V` thin volume, `t` thin pool, `-` plain ...).
    pub fn attr_type(&self) -> char {
        self.lv_attr.chars().next().unwrap_or('-')
    }

    /// Fifth character of lv_attr: state (`I` invalid snapshot, ...).
    pub fn attr_state(&self) -> char {
        self.lv_attr.chars().nth(4).unwrap_or('-')
    }

    /// The LV's UUID, if the report has one.
    pub fn uuid(&self) -> Option<String> {
        let u = self.lv_uuid.trim();
        (!u.is_empty()).then(|| u.to_string())
    }

    /// A classic snapshot (merging or not) or a thin LV with a thin origin.
    pub fn is_snapshot(&self) -> bool {
        matches!(self.attr_type(), 's' | 'S') || (self.segtype == "thin" && !self.origin.is_empty())
    }

    pub fn is_merging(&self) -> bool {
        self.attr_type() == 'S' || self.lv_merging.trim() == "merging"
    }
}
