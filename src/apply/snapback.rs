//! Snapback files: the destination's old contents of every range an apply overwrites, as a
//! format 4 stream marked as a snapback (see docs/stream-format.md).
//!
//! Two ways to write one:
//! - [`Snapback::create`], write-ahead, for streams without a manifest: records are appended
//!   batch by batch while the apply runs, each batch durable before it is overwritten;
//! - [`PendingSnapback`], for streams with a manifest: the whole snapback is written by the
//!   check that reads every range before anything is written, into a temporary file next to
//!   the snapback's path, and put in place (durable, with its directory entry) before the first
//!   write. A resumed apply of the same change set keeps the snapback of its first attempt, which
//!   holds the destination as it was before that attempt.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blockdev::{Device, DeviceKind};
use crate::error::{Error, IoContext, Result};
use crate::stream::manifest::{block_digest, BlockDigest, StreamIdentity};
use crate::stream::{
    Format, Record, StreamError, StreamInfo, StreamReader, StreamTotals, StreamWriter,
    WriterOptions,
};

/// The snapback file, shared between its stream writer (which buffers) and the code that
/// makes it durable.
#[derive(Clone)]
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether two stats name the same file, or the same block device through different nodes.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    (a.dev() == b.dev() && a.ino() == b.ino())
        || (a.file_type().is_block_device()
            && b.file_type().is_block_device()
            && a.rdev() == b.rdev())
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::Invalid(format!("{}: {why}", path.display()))
}

/// The directory a snapback file is created in.
pub(super) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What is at a snapback's path before the apply.
enum Existing {
    Nothing,
    /// A regular file: overwritten only with `--force` (unless it is kept).
    Other,
}

/// The checks every snapback path passes before anything is opened for writing: not the
/// destination by any name, a regular file if it exists, not on a file system that lives on the
/// destination. Returns what exists there and the mode to create the file with.
fn check_path(path: &Path, dest: &Path, dest_dev: &Device) -> Result<(Existing, u32)> {
    let dest_meta = dest_dev
        .file
        .metadata()
        .ctx(|| format!("{}: cannot stat", dest.display()))?;
    let existing = match std::fs::metadata(path) {
        Ok(meta) => {
            check_not_dest(path, &meta, dest, &dest_meta)?;
            Existing::Other
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Existing::Nothing,
        Err(e) => return Err(Error::io(format!("{}: cannot stat", path.display()), e)),
    };
    let parent = parent_of(path);
    let parent_meta =
        std::fs::metadata(parent).ctx(|| format!("{}: cannot stat", parent.display()))?;
    if dest_dev.kind == DeviceKind::BlockDevice && parent_meta.dev() == dest_meta.rdev() {
        return Err(refuse(
            path,
            &format!(
                "the snapback's file system is on the destination {}",
                dest.display()
            ),
        ));
    }
    // Old contents of the volume: readable by the owner only (or as strict as DEST).
    Ok((existing, 0o600 & dest_meta.permissions().mode()))
}

fn check_not_dest(
    path: &Path,
    meta: &std::fs::Metadata,
    dest: &Path,
    dest_meta: &std::fs::Metadata,
) -> Result<()> {
    if same_file(meta, dest_meta) {
        return Err(refuse(
            path,
            &format!(
                "the snapback cannot be the destination {} itself",
                dest.display()
            ),
        ));
    }
    if !meta.is_file() {
        return Err(refuse(path, "snapback must be a regular file"));
    }
    Ok(())
}

fn already_exists(path: &Path) -> Error {
    refuse(
        path,
        "snapback file already exists (use --force to overwrite it)",
    )
}

type SnapbackReader = StreamReader<std::io::BufReader<File>>;

/// The snapback at `path`, opened past its identity, if it is a snapback made for the change
/// set with digest `changes` (a candidate to keep: its contents are checked as the apply goes).
fn candidate(path: &Path, changes: &str) -> Option<SnapbackReader> {
    let file = File::open(path).ok()?;
    let mut reader = StreamReader::open(std::io::BufReader::new(file)).ok()?;
    if !reader.info().snapback {
        return None;
    }
    match reader.next_record().ok()? {
        Some(Record::Identity(json)) => {
            let id = StreamIdentity::from_json(json).ok()?;
            (id.for_changes.as_deref() == Some(changes)).then_some(reader)
        }
        _ => None,
    }
}

fn snapback_identity(for_changes: Option<String>) -> StreamIdentity {
    StreamIdentity {
        kind: "snapback".into(),
        lvmsync: env!("CARGO_PKG_VERSION").into(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
        for_changes,
        ..Default::default()
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("{}: cannot sync the directory", dir.display()))
}

/// A snapback file being written.
pub(super) struct Snapback {
    path: PathBuf,
    file: SharedFile,
    writer: StreamWriter<SharedFile>,
    /// Ends of records not aligned to 512 bytes so far, but those where one record goes on
    /// from where the one before it ended (the pieces of one record): a reader tracks the
    /// ranges they make, up to a limit.
    unaligned_ends: usize,
    /// Where the last record ended, and whether that end is not aligned (counted once the next
    /// record does not go on from it).
    last_end: Option<(u64, bool)>,
}

impl Snapback {
    /// Creates the write-ahead snapback file for an apply onto `dest` (open as `dest_dev`) and
    /// makes it, with its header, durable. Refused, before anything is opened for writing: an
    /// existing file without `force`, anything but a regular file, the destination itself (by
    /// any path), and a file on a file system that lives on the destination.
    pub fn create(
        path: &Path,
        force: bool,
        info: &StreamInfo,
        dest: &Path,
        dest_dev: &Device,
    ) -> Result<Self> {
        let (existing, mode) = check_path(path, dest, dest_dev)?;
        if !matches!(existing, Existing::Nothing) && !force {
            return Err(already_exists(path));
        }
        // Written beside its path and renamed into place once its header is durable: the path
        // never names an empty or half-made snapback, and an existing file there (`--force`) is
        // replaced, never written into.
        let parent = parent_of(path);
        let (temp, file) = temp_beside(path, parent, mode)?;
        let mut snapback = Self::on(file, path, info, dest_dev.size, None)?;
        snapback.make_durable()?;
        let placed = if force {
            temp.persist(path)
        } else {
            // Someone may have made the file meanwhile: never replace it then.
            temp.persist_noclobber(path)
        };
        placed.map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                already_exists(path)
            } else {
                Error::io(
                    format!("{}: cannot create snapback file", path.display()),
                    e.error,
                )
            }
        })?;
        // The file's name must survive a crash too.
        sync_dir(parent)?;
        Ok(snapback)
    }

    /// A snapback stream (header and identity) on an open file, named `path` in messages.
    fn on(
        file: File,
        path: &Path,
        info: &StreamInfo,
        dest_bytes: u64,
        for_changes: Option<String>,
    ) -> Result<Self> {
        let opts = WriterOptions {
            format: Format::V4,
            source_bytes: dest_bytes,
            chunk_bytes: info.chunk_bytes.unwrap_or(4096),
            compress: info.compressed.then_some(1),
            snapback: true,
        };
        let file = SharedFile(Arc::new(file));
        let mut writer =
            StreamWriter::new(file.clone(), &opts).map_err(|e| snapback_error(path, e))?;
        writer
            .identity(&snapback_identity(for_changes))
            .map_err(|e| snapback_error(path, e))?;
        Ok(Snapback {
            path: path.to_owned(),
            file,
            writer,
            unaligned_ends: 0,
            last_end: None,
        })
    }

    /// Appends the old contents `old` of the destination at `offset`. Refused past
    /// [`super::MAX_UNALIGNED_RANGES`] ends of records not aligned to 512 bytes, which would
    /// make a snapback readers refuse.
    pub fn save(&mut self, offset: u64, old: &[u8]) -> Result<()> {
        let sector = crate::stream::coverage::SECTOR;
        let end = offset + old.len() as u64;
        let goes_on = matches!(self.last_end, Some((e, _)) if e == offset);
        if !goes_on {
            let last_unaligned = matches!(self.last_end, Some((_, true)));
            self.unaligned_ends +=
                usize::from(last_unaligned) + usize::from(!offset.is_multiple_of(sector));
        }
        let end_unaligned = !end.is_multiple_of(sector);
        self.last_end = Some((end, end_unaligned));
        if self.unaligned_ends + usize::from(end_unaligned) > super::MAX_UNALIGNED_RANGES {
            return Err(refuse(
                &self.path,
                &format!(
                    "the snapback would hold records with more than {} ends that are not on a {sector}-byte boundary, more than a reader accepts (the range at byte {offset} is one too many); nothing of it was written",
                    super::MAX_UNALIGNED_RANGES
                ),
            ));
        }
        self.writer
            .data(offset, old)
            .map_err(|e| snapback_error(&self.path, e))
    }

    pub fn make_durable(&mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|e| snapback_error(&self.path, e))?;
        self.file
            .0
            .sync_data()
            .ctx(|| format!("{}: cannot write snapback", self.path.display()))
    }

    pub fn finish(self) -> Result<StreamTotals> {
        let (file, totals) = self
            .writer
            .finish()
            .map_err(|e| snapback_error(&self.path, e))?;
        file.0
            .sync_all()
            .ctx(|| format!("{}: cannot write snapback", self.path.display()))?;
        Ok(totals)
    }
}

/// A snapback written completely before the destination is touched (streams with a manifest).
pub(super) struct PendingSnapback {
    path: PathBuf,
    /// Something is at the path (refused without `force` unless it is kept).
    exists: bool,
    force: bool,
    /// The snapback at the path, if it was made for this same change set: read along with the
    /// check, record by record, to tell whether it holds exactly the snapshot's contents of
    /// every range (then it is kept: it restores the destination as it was before the first
    /// attempt). `None` once it does not.
    existing: Option<SnapbackReader>,
    temp: tempfile::NamedTempFile,
    snapback: Snapback,
}

/// What became of a [`PendingSnapback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapbackOutcome {
    /// Written at its path.
    Written(StreamTotals),
    /// The path already held the snapback of an earlier attempt at this change set, holding
    /// the snapshot's contents of every range: kept.
    Kept,
}

impl PendingSnapback {
    /// Checks the path (as [`Snapback::create`] does) and starts writing into a temporary file
    /// beside it. `changes` is the change-set digest of the stream being applied, if it has one.
    pub fn start(
        path: &Path,
        force: bool,
        info: &StreamInfo,
        dest: &Path,
        dest_dev: &Device,
        changes: Option<String>,
    ) -> Result<Self> {
        let (existing, mode) = check_path(path, dest, dest_dev)?;
        let exists = !matches!(existing, Existing::Nothing);
        let existing = match (&changes, exists) {
            (Some(c), true) => candidate(path, c),
            _ => None,
        };
        if exists && existing.is_none() && !force {
            return Err(already_exists(path));
        }
        let parent = parent_of(path);
        let (temp, file) = temp_beside(path, parent, mode)?;
        let snapback = Snapback::on(file, path, info, dest_dev.size, changes)?;
        Ok(PendingSnapback {
            path: path.to_owned(),
            exists,
            force,
            existing,
            temp,
            snapback,
        })
    }

    /// Saves a range's current contents; `prior` are the digests of the snapshot's contents of
    /// it, which a snapback worth keeping holds.
    pub fn save(
        &mut self,
        offset: u64,
        old: &[u8],
        prior: &dyn Fn(usize) -> BlockDigest,
        block: u64,
    ) -> Result<()> {
        if let Some(reader) = self.existing.as_mut() {
            let holds_prior = match reader.next_record() {
                Ok(Some(Record::Data { offset: o, data })) => {
                    o == offset
                        && data.len() == old.len()
                        && data
                            .chunks(block as usize)
                            .enumerate()
                            .all(|(i, b)| block_digest(b) == prior(i))
                }
                _ => false,
            };
            if !holds_prior {
                self.existing = None;
            }
        }
        self.snapback.save(offset, old)
    }

    /// Puts the snapback in place, durable, or keeps the one of an earlier attempt at the same
    /// change set. Refuses (the temporary file is removed) when something else is at the path
    /// and `force` was not given.
    pub fn commit(mut self) -> Result<SnapbackOutcome> {
        // Kept only if it held every range and ends right there, verified.
        let keep = self
            .existing
            .as_mut()
            .is_some_and(|r| matches!(r.next_record(), Ok(None)));
        if keep {
            return Ok(SnapbackOutcome::Kept);
        }
        if self.exists && !self.force {
            return Err(refuse(
                &self.path,
                "snapback file already exists and belongs to another sync (use --force to overwrite it)",
            ));
        }
        let totals = self.snapback.finish()?;
        self.temp.persist(&self.path).map_err(|e| {
            Error::io(
                format!("{}: cannot create snapback file", self.path.display()),
                e.error,
            )
        })?;
        sync_dir(parent_of(&self.path))?;
        Ok(SnapbackOutcome::Written(totals))
    }
}

/// A new temporary file of mode `mode` in `parent` (the directory of `path`), where a snapback
/// is written before it is renamed to `path`, and a handle to write it through.
fn temp_beside(path: &Path, parent: &Path, mode: u32) -> Result<(tempfile::NamedTempFile, File)> {
    let temp = tempfile::Builder::new()
        .prefix(".lvmsync-snapback-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(parent)
        .ctx(|| format!("{}: cannot create a snapback file", parent.display()))?;
    let file = temp
        .as_file()
        .try_clone()
        .ctx(|| format!("{}: cannot write snapback", path.display()))?;
    Ok((temp, file))
}

/// A snapback write error, with the file's name.
fn snapback_error(path: &Path, e: StreamError) -> Error {
    match e {
        StreamError::Io(e) => Error::io(format!("{}: cannot write snapback", path.display()), e),
        other => other.into(),
    }
}
