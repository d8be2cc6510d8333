//! Running LVM and device-mapper tools, and reading device facts from the kernel.
//!
//! Discovery asks everything through [`Tools`], so it can be tested with outputs captured from
//! real LVM; [`SystemTools`] is the implementation that runs the commands. [`run_tool`] runs
//! every tool, for discovery and for the thin pool's metadata snapshot guard alike.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use super::DevNum;
use crate::error::Error;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    /// Exists but is not a block device; says what it is ("a regular file", "a directory").
    NotBlock(&'static str),
    Block(DevNum),
}

/// A device-mapper device's identity, from `/sys/dev/block/MAJ:MIN/dm/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmInfo {
    pub name: String,
    pub uuid: String,
}

pub trait Tools {
    /// Follows symlinks.
    fn path_kind(&self, path: &Path) -> Result<PathKind, Error>;
    /// `None` when the block device is not a device-mapper device.
    fn dm_info(&self, dev: DevNum) -> Result<Option<DmInfo>, Error>;
    /// `lvs --reportformat json` over every LV (hidden ones too) of volume group `vg`.
    fn lvs_json(&self, vg: &str) -> Result<String, Error>;
    /// `dmsetup table` of one device.
    fn dmsetup_table(&self, dev: DevNum) -> Result<String, Error>;
    /// `dmsetup status` of one device.
    fn dmsetup_status(&self, dev: DevNum) -> Result<String, Error>;
}

/// The real system: runs `lvs` and `dmsetup`, reads sysfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTools;

/// Finds an admin tool: on `PATH`, or in the sbin directories a non-login PATH may lack.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    on_path
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// How running an admin tool failed.
#[derive(Debug)]
pub enum ToolFailure {
    /// It could not be started.
    Spawn(io::Error),
    /// It ran and exited unsuccessfully.
    Exit { status: ExitStatus, stderr: String },
}

/// Runs an admin tool (`lvs`, `dmsetup`), found on `PATH` or in the sbin directories, in the C
/// locale and without LVM's warnings about inherited descriptors; returns its standard output.
/// Every tool lvmsync runs goes through here.
pub fn run_tool(name: &str, args: &[&str]) -> Result<Vec<u8>, ToolFailure> {
    let out = Command::new(tool(name))
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .env("LC_ALL", "C")
        .output()
        .map_err(ToolFailure::Spawn)?;
    if !out.status.success() {
        return Err(ToolFailure::Exit {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// [`run_tool`] with its output as text and a failure as an [`Error`] with the last line the
/// tool said: for discovery and for `lvmsync replicate`'s changes alike.
pub(crate) fn run_text(name: &str, args: &[&str]) -> Result<String, Error> {
    let shown = format!("{name} {}", args.join(" "));
    let stdout = run_tool(name, args).map_err(|failure| match failure {
        ToolFailure::Spawn(e) => {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (is lvm2/dmsetup installed?)"
            } else {
                ""
            };
            Error::io(format!("cannot run {name}{hint}"), e)
        }
        ToolFailure::Exit { status, stderr } => {
            let detail = stderr.trim().lines().last().unwrap_or("").trim();
            Error::Invalid(format!(
                "`{shown}` failed ({status}){}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ))
        }
    })?;
    String::from_utf8(stdout)
        .map_err(|_| Error::Invalid(format!("`{shown}` printed something that is not UTF-8")))
}

impl Tools for SystemTools {
    fn path_kind(&self, path: &Path) -> Result<PathKind, Error> {
        use rustix::fs::{major, minor, stat, FileType};
        let st = match stat(path) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(PathKind::Missing),
            Err(e) => {
                return Err(Error::io(
                    format!("{}: cannot stat", path.display()),
                    e.into(),
                ))
            }
        };
        Ok(match FileType::from_raw_mode(st.st_mode) {
            FileType::BlockDevice => PathKind::Block(DevNum {
                major: major(st.st_rdev),
                minor: minor(st.st_rdev),
            }),
            FileType::RegularFile => PathKind::NotBlock("a regular file"),
            FileType::Directory => PathKind::NotBlock("a directory"),
            FileType::CharacterDevice => PathKind::NotBlock("a character device"),
            FileType::Fifo => PathKind::NotBlock("a FIFO"),
            FileType::Socket => PathKind::NotBlock("a socket"),
            _ => PathKind::NotBlock("not a block device"),
        })
    }

    fn dm_info(&self, dev: DevNum) -> Result<Option<DmInfo>, Error> {
        let dir = PathBuf::from(format!("/sys/dev/block/{dev}/dm"));
        let read = |f: &str| -> Result<Option<String>, Error> {
            match std::fs::read_to_string(dir.join(f)) {
                Ok(s) => Ok(Some(s.trim_end_matches('\n').to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(
                    format!("{}: cannot read", dir.join(f).display()),
                    e,
                )),
            }
        };
        let Some(name) = read("name")? else {
            return Ok(None);
        };
        let uuid = read("uuid")?.unwrap_or_default();
        Ok(Some(DmInfo { name, uuid }))
    }

    fn lvs_json(&self, vg: &str) -> Result<String, Error> {
        run_text(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-a",
                "-o",
                super::report::LVS_FIELDS,
                vg,
            ],
        )
    }

    fn dmsetup_table(&self, dev: DevNum) -> Result<String, Error> {
        let (j, m) = (dev.major.to_string(), dev.minor.to_string());
        run_text("dmsetup", &["table", "-j", &j, "-m", &m])
    }

    fn dmsetup_status(&self, dev: DevNum) -> Result<String, Error> {
        let (j, m) = (dev.major.to_string(), dev.minor.to_string());
        run_text("dmsetup", &["status", "-j", &j, "-m", &m])
    }
}
