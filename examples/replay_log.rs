//! Reads and replays a dm-log-writes log, for the crash-consistency VM scenario
//! (tests/vm/scenarios/crash-logwrites.sh): the kernel's `log-writes` target records every
//! write, discard and flush that reaches a device, in the order they became durable, and this
//! tool rebuilds the device as it was at any entry of that log, i.e. as a crash there would
//! have left it.
//!
//!   replay_log list LOG
//!       one line per entry: INDEX FLAGS OFFSET LENGTH [MARK], where FLAGS is a comma list of
//!       FLUSH, FUA, DISCARD, MARK and META (or "-"), OFFSET and LENGTH the written byte range
//!       on the logged device and MARK the text of a mark
//!   replay_log replay LOG DEV [--from N] (--to N | --to-mark TEXT)
//!       writes entries FROM..=TO (default FROM: 0; --to-mark: up to the first mark with that
//!       text) onto DEV in log order, discarded ranges as zeroes, then fsyncs DEV
//!
//! The log (little-endian, as drivers/md/dm-log-writes.c writes it): a super block at byte 0
//! (magic 0x6a736677736872, version 1, entry count as u64, sector size as u32) in one sector;
//! then per entry one sector holding its target sector, sector count, flags and text length
//! (u64 each) followed by a mark's text, and then the written data (sector count sectors; none
//! for a discard). Sectors are the logged device's logical block size, the super's sector size.
//! The super's entry count is brought up to date at every FUA write and mark, and when the
//! target is removed: read the log after removing the log-writes device. The log is read
//! through the page cache (a scan leaves it there for the replays that follow), and the target
//! writes the log device behind that cache: drop the device's stale buffers first
//! (`blockdev --flushbufs LOG`) if anything read it before.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use lvmsync::blockdev::{read_full_at, Device};

const MAGIC: u64 = 0x006a_7366_7773_6872;
const VERSION: u64 = 1;
const FLUSH: u64 = 1 << 0;
const FUA: u64 = 1 << 1;
const DISCARD: u64 = 1 << 2;
const MARK: u64 = 1 << 3;
const META: u64 = 1 << 4;
const FLAG_NAMES: [(u64, &str); 5] = [
    (FLUSH, "FLUSH"),
    (FUA, "FUA"),
    (DISCARD, "DISCARD"),
    (MARK, "MARK"),
    (META, "META"),
];
/// Bytes of an entry header before a mark's text.
const ENTRY_HEADER: usize = 32;
/// Bytes copied or zeroed per write while replaying.
const COPY_PIECE: usize = 1 << 20;
/// Bytes read at once while scanning the log.
const SCAN_BUFFER: usize = 4 << 20;

#[derive(Debug, Parser)]
#[command(about = "List or replay a dm-log-writes log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print one line per entry: INDEX FLAGS OFFSET LENGTH [MARK].
    List { log: PathBuf },
    /// Write entries FROM..=TO of LOG onto DEV, then fsync DEV.
    Replay {
        log: PathBuf,
        dev: PathBuf,
        /// First entry to write.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last entry to write.
        #[arg(long, conflicts_with = "to_mark", required_unless_present = "to_mark")]
        to: Option<u64>,
        /// Write up to the first mark with this text.
        #[arg(long, value_name = "TEXT")]
        to_mark: Option<String>,
    },
}

/// One logged write, discard, flush or mark.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    index: u64,
    flags: u64,
    /// Byte range on the logged device.
    offset: u64,
    len: u64,
    /// Where the written data starts in the log.
    data_at: u64,
    mark: Option<String>,
}

impl Entry {
    fn flag_names(&self) -> String {
        let mut names: Vec<String> = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| name.to_string())
            .collect();
        let unknown = self.flags & !FLAG_NAMES.iter().fold(0, |all, (bit, _)| all | bit);
        if unknown != 0 {
            names.push(format!("{unknown:#x}"));
        }
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }

    fn line(&self) -> String {
        let mut line = format!(
            "{} {} {} {}",
            self.index,
            self.flag_names(),
            self.offset,
            self.len
        );
        if let Some(mark) = &self.mark {
            line.push(' ');
            line.push_str(mark);
        }
        line
    }
}

/// An opened log and its entries.
struct Log {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
}

fn le64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// A sequential read through the log.
struct Scan<'a> {
    path: &'a Path,
    reader: BufReader<&'a File>,
    /// Bytes read so far.
    pos: u64,
}

impl Scan<'_> {
    /// Reads exactly `buf.len()` bytes, or says where the log ends.
    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self.reader.read(&mut buf[got..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e).with_context(|| {
                    format!(
                        "{}: cannot read {what} at byte {}",
                        self.path.display(),
                        self.pos
                    )
                })?,
            };
            if n == 0 {
                bail!(
                    "{}: the log ends inside {what} at byte {}",
                    self.path.display(),
                    self.pos
                );
            }
            got += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Reads past `len` bytes.
    fn skip(&mut self, len: u64, what: &str) -> Result<()> {
        let mut buf = [0u8; 65536];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.read(&mut buf[..n], what)?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes at `at`, or says where the log ends.
fn read_exact_at(path: &Path, file: &File, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    let got = read_full_at(file, buf, at)
        .with_context(|| format!("{}: cannot read {what} at byte {at}", path.display()))?;
    ensure!(
        got == buf.len(),
        "{}: the log ends inside {what} at byte {}",
        path.display(),
        at + got as u64
    );
    Ok(())
}

impl Log {
    fn open(path: &Path) -> Result<Log> {
        let file = Device::open_read(path)?.file;
        // One sequential pass (headers are scattered between the data): large reads, which
        // also leave the data in the page cache for a replay.
        let mut scan = Scan {
            path,
            reader: BufReader::with_capacity(SCAN_BUFFER, &file),
            pos: 0,
        };
        let mut sup = [0u8; 28];
        scan.read(&mut sup, "the super block")?;
        let magic = le64(&sup, 0);
        ensure!(
            magic == MAGIC,
            "{}: not a dm-log-writes log (magic {magic:#x})",
            path.display()
        );
        let version = le64(&sup, 8);
        ensure!(
            version == VERSION,
            "{}: log version {version}, only version {VERSION} is known",
            path.display()
        );
        let count = le64(&sup, 16);
        let sector = u32::from_le_bytes(sup[24..28].try_into().unwrap()) as u64;
        ensure!(
            sector.is_power_of_two() && (512..=65536).contains(&sector),
            "{}: sector size {sector} in the super block is not a power of two from 512 to 65536",
            path.display()
        );
        scan.skip(sector - sup.len() as u64, "the super block")?;
        let mut entries = Vec::new();
        let mut header = vec![0u8; sector as usize];
        for index in 0..count {
            scan.read(&mut header, &format!("the header of entry {index}"))?;
            let target = le64(&header, 0);
            let sectors = le64(&header, 8);
            let flags = le64(&header, 16);
            let text_len = le64(&header, 24);
            let mark = if flags & MARK != 0 {
                ensure!(
                    text_len <= sector - ENTRY_HEADER as u64,
                    "{}: entry {index}: mark text of {text_len} bytes does not fit its sector",
                    path.display()
                );
                let text = &header[ENTRY_HEADER..ENTRY_HEADER + text_len as usize];
                Some(String::from_utf8_lossy(text).into_owned())
            } else {
                // The kernel writes text only with marks.
                ensure!(
                    text_len == 0,
                    "{}: entry {index}: {text_len} bytes of text without a mark",
                    path.display()
                );
                None
            };
            let range = target
                .checked_mul(sector)
                .zip(sectors.checked_mul(sector))
                .filter(|(offset, len)| offset.checked_add(*len).is_some());
            let Some((offset, len)) = range else {
                bail!(
                    "{}: entry {index}: sector {target} + {sectors} sectors is out of range",
                    path.display()
                );
            };
            let data_at = scan.pos;
            if flags & DISCARD == 0 {
                scan.skip(len, &format!("the data of entry {index}"))?;
            }
            entries.push(Entry {
                index,
                flags,
                offset,
                len,
                data_at,
                mark,
            });
        }
        Ok(Log {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    /// The index of the first mark with text `text`.
    fn mark_index(&self, text: &str) -> Result<u64> {
        self.entries
            .iter()
            .find(|e| e.mark.as_deref() == Some(text))
            .map(|e| e.index)
            .with_context(|| format!("{}: no mark '{text}' in the log", self.path.display()))
    }

    /// Writes entries `from..=to` onto `dev` in log order, then fsyncs it.
    fn replay(&self, dev_path: &Path, from: u64, to: u64) -> Result<()> {
        let count = self.entries.len() as u64;
        ensure!(
            to < count,
            "{}: entry {to} does not exist (the log has {count} entries)",
            self.path.display()
        );
        ensure!(from <= to, "--from {from} is after --to {to}");
        let dev = Device::open_write(dev_path)?;
        let mut buf = vec![0u8; COPY_PIECE];
        for e in &self.entries[from as usize..=to as usize] {
            if e.flags & MARK != 0 || e.len == 0 {
                continue;
            }
            ensure!(
                e.offset + e.len <= dev.size,
                "{}: entry {} writes bytes {}..{}, past the end ({} bytes); nothing more written",
                dev_path.display(),
                e.index,
                e.offset,
                e.offset + e.len,
                dev.size
            );
            let mut done = 0;
            while done < e.len {
                let n = (e.len - done).min(COPY_PIECE as u64) as usize;
                let piece = &mut buf[..n];
                if e.flags & DISCARD != 0 {
                    // What a discarded range reads back as is up to the device: zeroes are one
                    // thing it may read back as (and what the VM's disks do).
                    piece.fill(0);
                } else {
                    let what = format!("the data of entry {}", e.index);
                    read_exact_at(&self.path, &self.file, piece, e.data_at + done, &what)?;
                }
                dev.file
                    .write_all_at(piece, e.offset + done)
                    .with_context(|| {
                        format!(
                            "{}: cannot write entry {} at byte {}",
                            dev_path.display(),
                            e.index,
                            e.offset + done
                        )
                    })?;
                done += n as u64;
            }
        }
        dev.sync()
            .with_context(|| format!("{}: fsync failed", dev_path.display()))
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::List { log } => {
            let log = Log::open(&log)?;
            let mut out = String::new();
            for e in &log.entries {
                out.push_str(&e.line());
                out.push('\n');
            }
            print!("{out}");
        }
        Command::Replay {
            log,
            dev,
            from,
            to,
            to_mark,
        } => {
            let log = Log::open(&log)?;
            let to = match (to, to_mark) {
                (Some(to), _) => to,
                (None, Some(text)) => log.mark_index(&text)?,
                (None, None) => unreachable!("clap requires --to or --to-mark"),
            };
            log.replay(&dev, from, to)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay_log: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a log the way the kernel target lays it out.
    struct LogWriter {
        sector: usize,
        bytes: Vec<u8>,
        count: u64,
    }

    impl LogWriter {
        fn new(sector: usize) -> Self {
            LogWriter {
                sector,
                bytes: vec![0; sector],
                count: 0,
            }
        }

        fn entry(&mut self, target: u64, sectors: u64, flags: u64, text: &[u8], data: &[u8]) {
            let mut header = vec![0u8; self.sector];
            for (i, v) in [target, sectors, flags, text.len() as u64]
                .into_iter()
                .enumerate()
            {
                header[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            header[ENTRY_HEADER..ENTRY_HEADER + text.len()].copy_from_slice(text);
            self.bytes.extend_from_slice(&header);
            self.bytes.extend_from_slice(data);
            self.count += 1;
        }

        fn write(&mut self, target: u64, data: &[u8], flags: u64) {
            assert_eq!(data.len() % self.sector, 0);
            let sectors = (data.len() / self.sector) as u64;
            self.entry(target, sectors, flags, b"", data);
        }

        fn flush(&mut self) {
            self.entry(0, 0, FLUSH, b"", b"");
        }

        fn discard(&mut self, target: u64, sectors: u64) {
            self.entry(target, sectors, DISCARD, b"", b"");
        }

        fn mark(&mut self, text: &str) {
            self.entry(0, 0, MARK, text.as_bytes(), b"");
        }

        /// The log with its super block, as a file in `dir`.
        fn save(&self, dir: &Path) -> PathBuf {
            let mut bytes = self.bytes.clone();
            bytes[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[8..16].copy_from_slice(&VERSION.to_le_bytes());
            bytes[16..24].copy_from_slice(&self.count.to_le_bytes());
            bytes[24..28].copy_from_slice(&(self.sector as u32).to_le_bytes());
            let path = dir.join("log");
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    fn filled(len: usize, byte: u8) -> Vec<u8> {
        vec![byte; len]
    }

    /// A log of a small device's life, and the device's contents after each entry.
    fn sample(sector: usize) -> (LogWriter, Vec<Vec<u8>>) {
        let dev_bytes = 16 * sector;
        let mut log = LogWriter::new(sector);
        let mut states = Vec::new();
        let mut dev = filled(dev_bytes, 0);
        let apply = |dev: &mut Vec<u8>, target: usize, data: &[u8]| {
            dev[target * sector..target * sector + data.len()].copy_from_slice(data);
        };
        log.write(0, &filled(4 * sector, b'a'), 0);
        apply(&mut dev, 0, &filled(4 * sector, b'a'));
        states.push(dev.clone());
        log.write(8, &filled(2 * sector, b'b'), META);
        apply(&mut dev, 8, &filled(2 * sector, b'b'));
        states.push(dev.clone());
        log.flush();
        states.push(dev.clone());
        log.mark("before");
        states.push(dev.clone());
        log.discard(1, 2);
        apply(&mut dev, 1, &filled(2 * sector, 0));
        states.push(dev.clone());
        log.write(9, &filled(sector, b'c'), FLUSH | FUA);
        apply(&mut dev, 9, &filled(sector, b'c'));
        states.push(dev.clone());
        log.write(15, &filled(sector, b'd'), FUA);
        apply(&mut dev, 15, &filled(sector, b'd'));
        states.push(dev.clone());
        log.mark("after");
        states.push(dev.clone());
        (log, states)
    }

    fn replayed(log: &Path, dir: &Path, len: usize, from: u64, to: u64) -> Vec<u8> {
        let dev = dir.join("dev");
        std::fs::write(&dev, vec![0u8; len]).unwrap();
        Log::open(log).unwrap().replay(&dev, from, to).unwrap();
        std::fs::read(&dev).unwrap()
    }

    #[test]
    fn lists_every_entry_with_flags_ranges_and_marks() {
        for sector in [512usize, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let (writer, _) = sample(sector);
            let log = Log::open(&writer.save(dir.path())).unwrap();
            let lines: Vec<String> = log.entries.iter().map(Entry::line).collect();
            let s = sector as u64;
            assert_eq!(
                lines,
                vec![
                    format!("0 - 0 {}", 4 * s),
                    format!("1 META {} {}", 8 * s, 2 * s),
                    "2 FLUSH 0 0".to_string(),
                    "3 MARK 0 0 before".to_string(),
                    format!("4 DISCARD {} {}", s, 2 * s),
                    format!("5 FLUSH,FUA {} {}", 9 * s, s),
                    format!("6 FUA {} {}", 15 * s, s),
                    "7 MARK 0 0 after".to_string(),
                ],
                "sector size {sector}"
            );
            assert_eq!(log.mark_index("after").unwrap(), 7);
        }
    }

    #[test]
    fn replays_up_to_every_entry() {
        for sector in [512usize, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let (writer, states) = sample(sector);
            let log = writer.save(dir.path());
            for (to, want) in states.iter().enumerate() {
                let got = replayed(&log, dir.path(), 16 * sector, 0, to as u64);
                assert!(got == *want, "sector size {sector}, up to entry {to}");
            }
        }
    }

    #[test]
    fn replays_in_steps_like_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, states) = sample(512);
        let log = writer.save(dir.path());
        let dev = dir.path().join("dev");
        std::fs::write(&dev, vec![0u8; 16 * 512]).unwrap();
        let opened = Log::open(&log).unwrap();
        opened.replay(&dev, 0, 3).unwrap();
        assert!(std::fs::read(&dev).unwrap() == states[3]);
        opened.replay(&dev, 4, 5).unwrap();
        assert!(std::fs::read(&dev).unwrap() == states[5]);
        opened.replay(&dev, 6, 7).unwrap();
        assert!(std::fs::read(&dev).unwrap() == states[7]);
    }

    #[test]
    fn a_discard_replays_as_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = sample(512);
        let log = writer.save(dir.path());
        let dev = dir.path().join("dev");
        std::fs::write(&dev, vec![0xffu8; 16 * 512]).unwrap();
        Log::open(&log).unwrap().replay(&dev, 4, 4).unwrap();
        let got = std::fs::read(&dev).unwrap();
        assert!(got[..512].iter().all(|&b| b == 0xff));
        assert!(got[512..3 * 512].iter().all(|&b| b == 0));
        assert!(got[3 * 512..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn refuses_what_is_not_a_complete_log() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = sample(512);
        let path = writer.save(dir.path());
        let good = std::fs::read(&path).unwrap();
        let err = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            format!("{:#}", Log::open(&path).err().expect("must be refused"))
        };
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(
            err(&bad).contains("not a dm-log-writes log"),
            "{}",
            err(&bad)
        );
        let mut bad = good.clone();
        bad[8] = 2;
        assert!(err(&bad).contains("log version 2"));
        let mut bad = good.clone();
        bad[24..28].copy_from_slice(&1000u32.to_le_bytes());
        assert!(err(&bad).contains("sector size 1000"));
        // The last entry's header is missing, or a write's data is cut short.
        assert!(err(&good[..good.len() - 512]).contains("inside the header of entry 7"));
        let mut bad = good[..good.len() - 2 * 512].to_vec();
        bad[16..24].copy_from_slice(&7u64.to_le_bytes());
        assert!(
            err(&bad).contains("inside the data of entry 6"),
            "{}",
            err(&bad)
        );
        assert!(err(&good[..20]).contains("inside the super block"));
    }

    #[test]
    fn refuses_bad_requests_and_writes_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = sample(512);
        let log = Log::open(&writer.save(dir.path())).unwrap();
        let dev = dir.path().join("dev");
        std::fs::write(&dev, vec![0u8; 16 * 512]).unwrap();
        let msg = |r: Result<()>| format!("{:#}", r.expect_err("must be refused"));
        assert!(msg(log.replay(&dev, 0, 8)).contains("entry 8 does not exist"));
        assert!(msg(log.replay(&dev, 5, 4)).contains("--from 5 is after --to 4"));
        assert!(format!("{:#}", log.mark_index("nowhere").unwrap_err()).contains("no mark"));
        // A device of 15 sectors: entry 6 (sector 15) is past its end.
        std::fs::write(&dev, vec![0u8; 15 * 512]).unwrap();
        assert!(msg(log.replay(&dev, 0, 7)).contains("entry 6 writes bytes 7680..8192"));
        assert!(msg(log.replay(&dir.path().join("absent"), 0, 1)).contains("cannot open"));
    }
}
