//! The prose of lvmsync's manual: the sections the man page adds to what clap renders (the
//! synopsis and the options), kept here once. `--help` shows some of them as plain text
//! ([`short_help`], [`long_help`]); `examples/man_and_completions.rs` renders all of them as
//! roff around clap_mangen's sections.

use crate::exit::Exit;

/// One section of the man page.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// The man page heading (`EXIT STATUS`).
    pub title: &'static str,
    pub blocks: &'static [Block],
}

/// A piece of a section.
#[derive(Debug, Clone, Copy)]
pub enum Block {
    /// A paragraph of running text.
    Text(&'static str),
    /// Command lines, shown as typed.
    Commands(&'static [&'static str]),
    /// Terms, each with its explanation.
    List(&'static [(&'static str, &'static str)]),
    /// Examples, each an explanation and its command lines.
    Examples(&'static [Example]),
}

/// An example: what it does, then the command lines that do it.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub what: &'static str,
    pub commands: &'static [&'static str],
}

/// `lvmsync changes`.
const CHANGES_FORM: (&str, &str) = (
    "lvmsync changes [--json] SNAPSHOT",
    "List the changed byte ranges, one \"OFFSET LENGTH KIND\" line each, in decimal \
     bytes; KIND is data or zero. With --json, one JSON object with the volume and \
     chunk sizes, the totals and every range.",
);

/// `lvmsync info`.
const INFO_FORM: (&str, &str) = (
    "lvmsync info FILE|- [--json]",
    "Describe a stream or snapback (its format, where it comes from, what it holds) \
     and verify it whole without applying it: exit 0 if it is valid (or a snapback \
     cut short by a crash, which applies), 1 with the byte where it is damaged or \
     cut. --json prints one JSON object.",
);

/// `lvmsync verify`, in short (see [`VERIFY`]).
const VERIFY_FORM: (&str, &str) = (
    "lvmsync verify [--changes|--stream FILE] [SOURCE] [HOST:]DEST",
    "Compare SOURCE with DEST, local or on HOST, and list the ranges where they \
     differ: see CHECKING THE RESULT.",
);

/// `lvmsync replicate`.
const REPLICATE_FORM: (&str, &str) = (
    "lvmsync replicate [OPTIONS] VG/LV [HOST:]DEST",
    "Keep DEST a copy of VG/LV, one run per update: the first run snapshots the \
     volume and sends the whole snapshot; each later run snapshots it again, sends \
     the changes since the previous run's snapshot (its base) read from the new one, \
     so DEST is one point in time, then removes the old base. Thin LVs get thin \
     snapshots; others classic ones of --snapshot-size (default 20% of the LV, at \
     least 64 MiB, at most the LV), refused if the volume group lacks the room. The \
     state is kept in LVM, as tags on the snapshots (lvmsync-base:DEST, \
     lvmsync-pending:DEST, lvmsync-retired:DEST, DEST as spelled, characters LVM does \
     not allow in tags as =XX), so each DEST has its own base. A run interrupted at \
     any point is finished by the next one; a classic base that overflowed makes the \
     next run copy the whole volume, saying so. Runs on one LV never overlap: a \
     second one is refused (--wait waits for the first). With --converge, rounds \
     are repeated until one sends at most --until SIZE or takes at most --until \
     TIME (at most --max-passes, default 10, else the run fails and runs no hook); \
     then --final-hook runs (sh -c), a last round, --after-hook, and the downtime \
     is printed, from the start of the final hook to the end of the after hook. \
     The hooks get LVMSYNC_LV, LVMSYNC_DEST, LVMSYNC_HOOK, LVMSYNC_PASS and (the \
     after hook) LVMSYNC_BASE. A failing final hook ends the run before the last \
     round; a failing after hook fails the run, the copy complete.",
);

/// `lvmsync replicate --status`.
const REPLICATE_STATUS_FORM: (&str, &str) = (
    "lvmsync replicate --status VG/LV",
    "List the destinations of VG/LV: each with its base snapshot, when that was \
     taken and how full a classic one is, and snapshots an interrupted run left.",
);

/// What stands in for SNAPSHOT when it is not active.
const OFFLINE_SOURCES: Block = Block::Text(
    "Offline change sources stand in for SNAPSHOT in every form, for forensics, tests or \
     a machine without the snapshot active: --cow FILE, a copy of a classic snapshot's \
     exception store (its -cow device), or --thin-metadata FILE --thin-ids SNAP:ORIGIN, \
     a copy of a thin pool's metadata and the device ids of the snapshot and its origin. \
     To send, --data-source then names the origin to read the data from.",
);

pub const DESCRIPTION: Section = Section {
    title: "DESCRIPTION",
    blocks: &[
        Block::Text(
            "lvmsync moves an LVM logical volume to another machine with seconds of downtime by \
             sending only the blocks written since a snapshot. It reads the change list from \
             device-mapper's own metadata, the exception store of a classic (COW) snapshot or \
             the mapping btrees of a thin pool, so the cost of a sync follows the size of the \
             change, not the size of the volume. The changed blocks are read from the \
             snapshot's origin (or from --data-source), so the destination ends up equal to the \
             origin.",
        ),
        Block::Text(
            "lvmsync is a drop-in successor of Ruby lvmsync 3.x: the same command line, and its \
             stream format 3 read and written byte for byte. By default it writes format 4, with \
             a checksum on every record, a digest of all data and an end marker, so that a \
             truncated or damaged stream is always refused. It runs as root on both hosts.",
        ),
        Block::List(&[
            (
                "lvmsync [OPTIONS] SNAPSHOT [HOST:]DEST",
                "Send the changes since SNAPSHOT to DEST, a block device or file as large as \
                 the volume: a local one, or one on HOST (host, user@host or [IPv6 address]), \
                 reached with the remote shell of --rsh, which runs lvmsync --apply - there \
                 (--remote-path).",
            ),
            (
                "lvmsync [OPTIONS] --stdout SNAPSHOT",
                "Write the change stream to standard output: a file or a pipe.",
            ),
            (
                "lvmsync [OPTIONS] --full SNAPSHOT [HOST:]DEST|--stdout",
                "The first copy: the whole of SNAPSHOT as it was when it was taken, to DEST or \
                 standard output, in the same stream formats. All-zero stretches go as zero \
                 ranges (a thin snapshot's unmapped blocks and an image's holes are not even \
                 read), so DEST allocates about what SNAPSHOT holds. A block device or image \
                 file can stand in for SNAPSHOT, but it must not change during the copy: copy \
                 a snapshot of a volume in use.",
            ),
            (
                "lvmsync [OPTIONS] --checksum SOURCE [HOST:]DEST [--stdout]",
                "No snapshot needed: both ends read their volume at once and hash every 4 KiB \
                 block, and only the blocks that differ are sent (read from SOURCE) while the \
                 comparison goes on, as a format 4 stream: --snapback, -z and --progress work \
                 as for any sync. SOURCE and DEST are any block devices or image files; a DEST \
                 smaller than SOURCE is refused before anything is written. A SOURCE written \
                 meanwhile gives a torn copy (each block as it was when read): give a snapshot \
                 as SOURCE for a consistent one. With --stdout, DEST is only read and the \
                 stream goes to standard output, for --apply to that DEST later.",
            ),
            (
                "lvmsync [OPTIONS] --stdout --resume FILE SNAPSHOT",
                "Finish a dump that an earlier --stdout run into FILE left cut short (a crash, a \
                 full disk), in place: FILE must be a regular file holding the start of the \
                 stream this run writes (the same options and the same change set), which is \
                 verified and kept up to its last complete record; the rest is appended, and \
                 FILE ends as the whole stream, checksums and digest included. Anything else \
                 is refused and FILE left as it was. Format 4 only.",
            ),
            (
                "lvmsync [OPTIONS] --apply FILE|- DEST",
                "Apply a change stream, format 3 or 4 (detected), from FILE or standard input \
                 to DEST. Snapback files are applied the same way.",
            ),
            CHANGES_FORM,
            INFO_FORM,
            VERIFY_FORM,
            REPLICATE_FORM,
            REPLICATE_STATUS_FORM,
        ]),
        OFFLINE_SOURCES,
    ],
};

pub const WORKFLOW: Section = Section {
    title: "WORKFLOW",
    blocks: &[
        Block::Text(
            "Moving /dev/vg/lv from host A to host B, where a volume of the same size exists as \
             /dev/vg/lv on B. The simple way is one command on A while the service runs: it \
             copies the whole volume, then what was written meanwhile, pass after pass, until a \
             pass takes at most 5 s; then it runs the final hook (stop the service), sends the \
             last changes, runs the after hook (start the service on B) and prints the \
             downtime:",
        ),
        Block::Commands(&[
            "lvmsync replicate --converge --until 5s \\",
            "  --final-hook 'systemctl stop app' \\",
            "  --after-hook 'ssh B systemctl start app' vg/lv B:/dev/vg/lv",
        ]),
        Block::Text(
            "To keep a standby copy on B current instead, run lvmsync replicate vg/lv \
             B:/dev/vg/lv as often as you like, or from the systemd timer \
             lvmsync-replicate@.timer (see the README).",
        ),
        Block::Text("The same, step by step:"),
        Block::Text("1. On A, snapshot the volume (a classic snapshot, or a thin one):"),
        Block::Commands(&[
            "lvcreate --snapshot -L 10G -n lv-snap vg/lv",
            "lvcreate --snapshot -n lv-snap vg/lv",
        ]),
        Block::Text("2. Copy the snapshot to B while the service keeps running:"),
        Block::Commands(&["lvmsync --full /dev/vg/lv-snap B:/dev/vg/lv"]),
        Block::Text("3. Stop the service on A."),
        Block::Text("4. Send what changed since step 1:"),
        Block::Commands(&["lvmsync /dev/vg/lv-snap B:/dev/vg/lv"]),
        Block::Text(
            "5. Start the service on B. Remove the snapshot on A (lvremove vg/lv-snap) when it \
             is no longer needed.",
        ),
        Block::Text(
            "Step 2 reads the whole snapshot, with large reads and many in flight, and sends \
             zero ranges for what reads as zeros; an inactive thin snapshot (LVM creates them \
             with the activation-skip flag) is read through a read-only device lvmsync makes \
             for the copy and removes afterwards. Step 4 reads and sends only the changed \
             blocks. With --snapback FILE it also keeps, on B, what it overwrote: applying FILE \
             to B's volume undoes the sync.",
        ),
    ],
};

pub const VERIFY: Section = Section {
    title: "CHECKING THE RESULT",
    blocks: &[
        Block::Text(
            "lvmsync verify compares a source with a destination, DEST or HOST:DEST, and prints \
             the ranges where they differ, one \"OFFSET LENGTH\" line each in decimal bytes, \
             adjacent ones merged, and a summary line on standard error. Exit status 0: equal; \
             1: different; 3: could not compare (a side could not be read, the connection \
             failed, or the remote lvmsync has no verify).",
        ),
        Block::List(&[
            (
                "lvmsync verify SOURCE [HOST:]DEST",
                "Whole volumes: any two block devices or image files, compared up to the end of \
                 the smaller one. The bytes past it are a difference.",
            ),
            (
                "lvmsync verify --changes SNAPSHOT [HOST:]DEST",
                "Only the ranges changed since SNAPSHOT, read from its origin (or \
                 --data-source): checks a sync in the time the sync took. --cow or \
                 --thin-metadata with --thin-ids and --data-source stand in for SNAPSHOT.",
            ),
            (
                "lvmsync verify --stream FILE|- [HOST:]DEST",
                "Whether DEST holds what the stream writes: the data of its data records, zeros \
                 in its zero ranges.",
            ),
        ]),
        Block::Text(
            "Both sides are read at the same time with many reads in flight and hashed with \
             BLAKE3 in chunks of --chunk SIZE (default 1M, a multiple of 4K from 4K to 16M): \
             differences are reported per chunk. For HOST:DEST, lvmsync runs lvmsync verify \
             --serve DEST on HOST through the remote shell (-e, --remote-path); one hash per \
             64 chunks crosses the network, and the chunk hashes of the groups that differ. \
             --json prints one JSON object instead of the ranges: equal, mode, source, dest, \
             source_bytes, dest_bytes, chunk_bytes, compared_bytes, differing_bytes, differing \
             (offset and len of each range), elapsed_s, bytes_sent and bytes_received (with \
             the DEST side). lvmsync verify --help lists its options.",
        ),
    ],
};

pub const STREAM_FORMATS: Section = Section {
    title: "STREAM FORMATS",
    blocks: &[
        Block::List(&[
            (
                "3",
                "Ruby lvmsync's \"lvmsync PROTO[3]\": records of an offset, a length and the \
                 data, with no end marker and no checksum. Use it only to talk to Ruby lvmsync: \
                 a format 3 stream cut exactly between two records cannot be told from a \
                 complete one.",
            ),
            (
                "4",
                "lvmsync's own: a header with the source size and chunk size, data and zero \
                 records each with a CRC32C, optional zstd compression, and an end record with \
                 the record count, the byte counts and a BLAKE3 digest of all data. A missing \
                 end, a bad checksum, records out of order or trailing bytes are refused.",
            ),
        ]),
        Block::Text(
            "Snapback files are format 4 streams, whatever the format applied; format 3 \
             snapbacks written by Ruby lvmsync are applied too.",
        ),
    ],
};

pub const EXIT_STATUS: Section = Section {
    title: "EXIT STATUS",
    blocks: &[Block::List(&Exit::TABLE)],
};

pub const GUARANTEES: Section = Section {
    title: "GUARANTEES",
    blocks: &[
        Block::Text(
            "Exit status 0 means that the whole stream arrived, was verified and is on disk: \
             the destination, and the snapback if any, are fsynced before lvmsync exits 0. A \
             dead ssh, a receiver that fails, a truncated or damaged stream, or a classic \
             snapshot that overflowed: each ends with a one-line error and a non-zero status.",
        ),
        Block::Text(
            "A destination is never created or truncated. A record that would reach past its \
             end is an error, and a format 4 stream whose source is larger than the destination \
             is refused before the first write; so is a --full copy to a smaller destination in \
             either format. A data source that cannot be the volume's origin is refused before \
             anything is written.",
        ),
        Block::Text(
            "A format 4 stream opens with a manifest (unless --no-check, or nothing holds the \
             snapshot's own contents, as with --thin-metadata without --base-source; an \
             inactive thin snapshot is read through a read-only device lvmsync makes while it \
             reads it): every range it changes, with a digest of the snapshot's contents \
             there. Before it writes anything, the receiver reads every one of those ranges of \
             DEST: where DEST holds neither the snapshot's contents nor the new ones, it is not \
             a copy of that snapshot or was changed since, and the whole apply is refused with \
             one line naming the first byte that differs (--force applies anyway). Ranges that \
             already hold the new contents are skipped, so a sync or an apply interrupted at any \
             point (a crash, kill -9, a lost connection) is finished by running it again; a \
             sync does not even send those ranges again.",
        ),
        Block::Text(
            "Snapbacks are write-ahead: the snapback file, its header and its directory entry \
             are on disk before the destination is touched, and the old contents of every range \
             are on disk, in complete checksummed records, before the range is overwritten. A \
             crash or kill -9 at any point leaves a snapback that rolls back everything that was \
             written: lvmsync --apply SNAPBACK DEST restores every range it recorded and exits \
             0, saying \"snapback ends at byte N without an end record (the apply that wrote it \
             was interrupted); every recorded range restored\" when the crash cut it short. Roll \
             back several syncs by applying their snapbacks newest first. An interrupted apply \
             run again with the same snapback file keeps it (it restores DEST as it was before \
             the first attempt); with another file, the ranges already written are saved as \
             found, and lvmsync says to apply that snapback first, then the first attempt's.",
        ),
        Block::Text(
            "A snapback is created with mode 0600 (or stricter, as DEST), and refused if it \
             exists (unless --force), if it is not a regular file, if it is DEST itself by any \
             name, or if its file system lives on DEST: all before anything is written.",
        ),
        Block::Text(
            "To read a live thin snapshot, lvmsync holds a metadata snapshot of its pool and \
             releases it on exit, and on SIGINT, SIGTERM and SIGHUP (exit status 128+N). After \
             kill -9 it stays held, and lvmsync refuses a pool whose metadata snapshot is held \
             by another tool; when no other tool uses it, release it with dmsetup message POOL 0 \
             release_metadata_snap (POOL is the pool's device-mapper name, such as \
             vg-pool-tpool).",
        ),
        Block::Text(
            "To copy an inactive thin snapshot, lvmsync makes a read-only device-mapper device \
             of it named lvmsync-thinID-PID, and removes it on exit, and on SIGINT, SIGTERM and \
             SIGHUP. After kill -9 it stays: remove it with dmsetup remove NAME.",
        ),
        Block::Text(
            "Memory stays under 128 MiB whatever the stream. Every I/O error names the file or \
             stream and the operation that failed.",
        ),
    ],
};

/// Every example; the first [`HELP_EXAMPLES`] are shown by `--help` too.
pub const EXAMPLES: &[Example] = &[
    Example {
        what: "Copy the whole snapshot to host B, the first time:",
        commands: &["lvmsync --full /dev/vg/lv-snap B:/dev/vg/lv"],
    },
    Example {
        what: "Send the changes since the snapshot to host B, over ssh:",
        commands: &["lvmsync /dev/vg/lv-snap B:/dev/vg/lv"],
    },
    Example {
        what: "The same, keeping on B what the sync overwrites; applying it undoes the sync:",
        commands: &[
            "lvmsync -b /root/lv.snapback /dev/vg/lv-snap root@B:/dev/vg/lv",
            "ssh root@B lvmsync --apply /root/lv.snapback /dev/vg/lv",
        ],
    },
    Example {
        what: "Write the changes to a file, compressed, and apply them later:",
        commands: &[
            "lvmsync --stdout -z /dev/vg/lv-snap > lv.changes",
            "lvmsync --apply lv.changes /dev/vg/lv",
        ],
    },
    Example {
        what: "Sync a local copy:",
        commands: &["lvmsync /dev/vg/lv-snap /dev/backup/lv"],
    },
    Example {
        what: "Another ssh port, and lvmsync copied to /root on B (a static build needs nothing \
               else there):",
        commands: &[
            "scp -P 2222 lvmsync root@B:/root/",
            "lvmsync -e 'ssh -p 2222' --remote-path /root/lvmsync \\",
            "    /dev/vg/lv-snap root@B:/dev/vg/lv",
        ],
    },
    Example {
        what: "A host given by its IPv6 address:",
        commands: &["lvmsync /dev/vg/lv-snap '[fd00::2]:/dev/vg/lv'"],
    },
    Example {
        what: "Pull instead of push: B reads the stream from A:",
        commands: &[
            "ssh A lvmsync --stdout /dev/vg/lv-snap |",
            "    lvmsync --apply - /dev/vg/lv",
        ],
    },
    Example {
        what: "Send to a Ruby lvmsync 3.x receiver:",
        commands: &["lvmsync --format 3 /dev/vg/lv-snap B:/dev/vg/lv"],
    },
    Example {
        what: "List what would be sent, or see the whole sync's records and stream size without \
               sending anything:",
        commands: &[
            "lvmsync changes /dev/vg/lv-snap",
            "lvmsync --dry-run /dev/vg/lv-snap B:/dev/vg/lv",
        ],
    },
    Example {
        what: "Keep a copy on host B current (run it again for each update), and see its base:",
        commands: &[
            "lvmsync replicate vg/lv B:/dev/vg/lv",
            "lvmsync replicate --status vg/lv",
        ],
    },
    Example {
        what: "Move vg/lv to host B with passes until one sends at most 64 MiB, then stop the \
               service, send the rest and start it on B:",
        commands: &[
            "lvmsync replicate --converge --until 64M \\",
            "  --final-hook 'systemctl stop app' \\",
            "  --after-hook 'ssh B systemctl start app' vg/lv B:/dev/vg/lv",
        ],
    },
    Example {
        what: "Check a dump, or a snapback, before applying it:",
        commands: &["lvmsync info lv.changes"],
    },
    Example {
        what: "Finish a compressed dump that was cut short, in place:",
        commands: &["lvmsync --stdout -z --resume lv.changes /dev/vg/lv-snap"],
    },
    Example {
        what: "After a sync, check that B holds the origin's contents of every changed range; \
               or compare the whole volumes:",
        commands: &[
            "lvmsync verify --changes /dev/vg/lv-snap B:/dev/vg/lv",
            "lvmsync verify /dev/vg/lv B:/dev/vg/lv",
        ],
    },
    Example {
        what: "Offline sources: a copy of a snapshot's -cow device and of its origin, and a copy \
               of a thin pool's metadata:",
        commands: &[
            "lvmsync changes --cow snap-cow.img",
            "lvmsync --cow snap-cow.img --data-source origin.img copy.img",
            "lvmsync changes --thin-metadata tmeta.img --thin-ids 2:1",
        ],
    },
];

/// How many of [`EXAMPLES`] `--help` shows.
pub const HELP_EXAMPLES: usize = 4;

/// The other manual pages of lvmsync(8)'s SEE ALSO, after the pages of its subcommands.
pub const SEE_ALSO: &str = "lvm(8), lvcreate(8), lvmthin(7), dmsetup(8), thin_delta(8), ssh(1)";

/// A subcommand's own manual: its man page, lvmsync-NAME(8), shows the description and the
/// examples around clap's synopsis and options; its `--help` shows the examples.
#[derive(Debug, Clone, Copy)]
pub struct Subcommand {
    /// The subcommand, as typed after `lvmsync`.
    pub name: &'static str,
    pub description: &'static [Block],
    pub examples: &'static [Example],
}

pub const CHANGES: Subcommand = Subcommand {
    name: "changes",
    description: &[Block::List(&[CHANGES_FORM]), OFFLINE_SOURCES],
    examples: &[
        Example {
            what: "List the byte ranges written since the snapshot:",
            commands: &["lvmsync changes /dev/vg/lv-snap"],
        },
        Example {
            what: "The same as one JSON object, with the totals:",
            commands: &["lvmsync changes --json /dev/vg/lv-snap"],
        },
        Example {
            what: "From a copy of a snapshot's -cow device, or of a thin pool's metadata:",
            commands: &[
                "lvmsync changes --cow snap-cow.img",
                "lvmsync changes --thin-metadata tmeta.img --thin-ids 2:1",
            ],
        },
    ],
};

pub const INFO: Subcommand = Subcommand {
    name: "info",
    description: &[Block::List(&[INFO_FORM])],
    examples: &[
        Example {
            what: "Check a dump before applying it:",
            commands: &["lvmsync info lv.changes"],
        },
        Example {
            what: "Check a snapback, and print what it holds as JSON:",
            commands: &["lvmsync info --json /root/lv.snapback"],
        },
        Example {
            what: "Check a stream read from standard input, without keeping it:",
            commands: &["lvmsync --stdout -z /dev/vg/lv-snap | lvmsync info -"],
        },
    ],
};

pub const VERIFY_COMMAND: Subcommand = Subcommand {
    name: "verify",
    description: VERIFY.blocks,
    examples: &[
        Example {
            what: "After a sync, check that B holds the origin's contents of every changed \
                   range:",
            commands: &["lvmsync verify --changes /dev/vg/lv-snap B:/dev/vg/lv"],
        },
        Example {
            what: "After a first copy (--full), compare the whole snapshot with the copy on \
                   host B, in chunks of 64 KiB:",
            commands: &["lvmsync verify --chunk 64K /dev/vg/lv-snap B:/dev/vg/lv"],
        },
        Example {
            what: "Check that a local copy holds what a dump applied to it wrote, and print a \
                   JSON report:",
            commands: &["lvmsync verify --json --stream lv.changes /dev/backup/lv"],
        },
    ],
};

pub const REPLICATE: Subcommand = Subcommand {
    name: "replicate",
    description: &[
        Block::List(&[REPLICATE_FORM, REPLICATE_STATUS_FORM]),
        Block::Text(
            "Run it as often as you like, or from the systemd timer lvmsync-replicate@.timer \
             (see the README).",
        ),
    ],
    examples: &[
        Example {
            what: "Keep a copy on host B current (run it again for each update):",
            commands: &["lvmsync replicate vg/lv B:/dev/vg/lv"],
        },
        Example {
            what: "See its destinations and their base snapshots:",
            commands: &["lvmsync replicate --status vg/lv"],
        },
        Example {
            what: "Move vg/lv to host B with passes until one sends at most 64 MiB, then stop \
                   the service, send the rest and start it on B:",
            commands: &[
                "lvmsync replicate --converge --until 64M \\",
                "  --final-hook 'systemctl stop app' \\",
                "  --after-hook 'ssh B systemctl start app' vg/lv B:/dev/vg/lv",
            ],
        },
    ],
};

/// Every subcommand's manual.
pub const SUBCOMMANDS: [Subcommand; 4] = [CHANGES, INFO, VERIFY_COMMAND, REPLICATE];

/// The sections the man page adds after OPTIONS, in order (EXAMPLES is rendered from
/// [`EXAMPLES`] between GUARANTEES and SEE ALSO).
pub const AFTER_OPTIONS: [Section; 4] = [VERIFY, STREAM_FORMATS, EXIT_STATUS, GUARANTEES];

/// Where the whole manual is.
const MORE: &str = "The workflow, the guarantees and more examples: man 8 lvmsync";

/// Width of the plain text, so that an 80-column terminal shows it unwrapped.
const WIDTH: usize = 79;

/// Text after the options in `lvmsync -h`.
pub fn short_help() -> String {
    let mut out = String::new();
    plain_examples(&mut out);
    out.push('\n');
    out.push_str(&textwrap::fill(
        &format!("The exit statuses: lvmsync --help. {MORE}"),
        WIDTH,
    ));
    out
}

/// Text after the options in `lvmsync --help`.
pub fn long_help() -> String {
    let mut out = String::new();
    plain_examples(&mut out);
    out.push_str("\nExit status:\n");
    plain_blocks(&mut out, EXIT_STATUS.blocks);
    out.push('\n');
    out.push_str(MORE);
    out
}

/// Text after the options in `lvmsync NAME --help` (and `-h`).
///
/// # Panics
/// If NAME is not in [`SUBCOMMANDS`].
pub fn subcommand_help(name: &str) -> String {
    let sub = SUBCOMMANDS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no manual for the subcommand {name}"));
    let mut out = String::from("Examples:\n");
    plain_blocks(&mut out, &[Block::Examples(sub.examples)]);
    out.push('\n');
    out.push_str(&format!("More: man 8 lvmsync-{name}, man 8 lvmsync"));
    out
}

fn plain_examples(out: &mut String) {
    out.push_str("Examples:\n");
    plain_blocks(out, &[Block::Examples(&EXAMPLES[..HELP_EXAMPLES])]);
}

/// Plain text of `blocks`, indented by two spaces, one block per paragraph.
fn plain_blocks(out: &mut String, blocks: &[Block]) {
    let wrap = |text: &str, first: &str, rest: &str| {
        let opts = textwrap::Options::new(WIDTH)
            .initial_indent(first)
            .subsequent_indent(rest);
        textwrap::fill(text, opts) + "\n"
    };
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match block {
            Block::Text(text) => out.push_str(&wrap(text, "  ", "  ")),
            Block::Commands(lines) => {
                for line in *lines {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            Block::List(items) => {
                let width = items.iter().map(|(t, _)| t.len()).max().unwrap_or(0) + 2;
                let rest = " ".repeat(width + 2);
                for (term, text) in *items {
                    out.push_str(&wrap(text, &format!("  {term:width$}"), &rest));
                }
            }
            Block::Examples(examples) => {
                for (j, ex) in examples.iter().enumerate() {
                    if j > 0 {
                        out.push('\n');
                    }
                    out.push_str(&wrap(ex.what, "  ", "  "));
                    for line in ex.commands {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_fits_80_columns_and_gives_every_exit_status() {
        let subcommands = SUBCOMMANDS.iter().map(|s| subcommand_help(s.name));
        for text in [short_help(), long_help()].into_iter().chain(subcommands) {
            for line in text.lines() {
                assert!(line.len() <= 80, "too long: {line:?}");
            }
        }
        let long = long_help();
        for (code, _) in Exit::TABLE {
            assert!(
                long.lines().any(|l| l.starts_with(&format!("  {code} "))),
                "exit status {code} missing:\n{long}"
            );
        }
        assert!(long.contains(EXAMPLES[0].commands[0]));
        assert!(!long.contains(EXAMPLES[HELP_EXAMPLES].commands[0]));
    }

    /// The man page indents command lines by 11 columns.
    #[test]
    fn command_lines_fit_80_columns_in_the_man_page() {
        let sections = [
            DESCRIPTION,
            WORKFLOW,
            VERIFY,
            STREAM_FORMATS,
            EXIT_STATUS,
            GUARANTEES,
        ];
        let blocks = sections
            .iter()
            .flat_map(|s| s.blocks.iter())
            .chain(SUBCOMMANDS.iter().flat_map(|s| s.description.iter()));
        let commands = blocks
            .filter_map(|b| match b {
                Block::Commands(c) => Some(c.iter()),
                _ => None,
            })
            .flatten()
            .chain(all_examples().flat_map(|e| e.commands.iter()));
        for line in commands {
            assert!(line.len() <= 69, "too long: {line:?}");
        }
    }

    /// The examples of lvmsync(8) and of every subcommand's page and help.
    fn all_examples() -> impl Iterator<Item = &'static Example> {
        EXAMPLES
            .iter()
            .chain(SUBCOMMANDS.iter().flat_map(|s| s.examples.iter()))
    }

    /// The whole commands of `lines`: a line ending in `\` or `|` goes on in the next one.
    fn whole_commands(lines: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut command = String::new();
        for line in lines {
            let line = line.trim();
            if let Some(head) = line.strip_suffix('\\') {
                command.push_str(head);
                continue;
            }
            command.push_str(line);
            if line.ends_with('|') {
                command.push(' ');
                continue;
            }
            out.push(std::mem::take(&mut command));
        }
        assert!(command.is_empty(), "unfinished command: {command}");
        out
    }

    /// The command lines of lvmsync that `command` runs (here, or on another host through
    /// ssh), each without its redirections.
    fn lvmsync_runs(command: &str) -> Vec<Vec<String>> {
        let words = shlex::split(command).unwrap_or_else(|| panic!("bad quoting: {command}"));
        words
            .split(|w| ["|", "&&", ";"].contains(&w.as_str()))
            .filter_map(|words| {
                let start = match words.first()?.as_str() {
                    "lvmsync" => 0,
                    "ssh" => words.iter().position(|w| w == "lvmsync")?,
                    _ => return None,
                };
                let run = words[start..]
                    .iter()
                    .take_while(|w| !w.starts_with(['<', '>']))
                    .cloned()
                    .collect();
                Some(run)
            })
            .collect()
    }

    /// Whether lvmsync's own command line accepts `words`, as lvmsync would run them.
    fn accepted(words: &[String]) -> std::result::Result<(), String> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(words).map_err(|e| e.to_string())?;
        cli.into_config().map(drop).map_err(|e| e.to_string())
    }

    #[test]
    fn every_example_is_a_command_lvmsync_accepts() {
        let mut commands: Vec<String> = all_examples()
            .flat_map(|e| {
                let whole = whole_commands(e.commands);
                assert!(
                    whole.iter().any(|c| !lvmsync_runs(c).is_empty()),
                    "{:?} runs no lvmsync",
                    e.what
                );
                whole
            })
            .collect();
        let sections = [DESCRIPTION, WORKFLOW, VERIFY, GUARANTEES];
        for block in sections.iter().flat_map(|s| s.blocks.iter()) {
            if let Block::Commands(lines) = block {
                commands.extend(whole_commands(lines));
            }
        }
        let runs: Vec<Vec<String>> = commands.iter().flat_map(|c| lvmsync_runs(c)).collect();
        for run in &runs {
            if let Err(e) = accepted(run) {
                panic!(
                    "{}: {e}",
                    shlex::try_join(run.iter().map(|w| w.as_str())).unwrap()
                );
            }
        }
        // Each line counts: a pipeline runs two, a command through ssh one.
        assert!(runs.len() >= 40, "{}", runs.len());
        let through_ssh = ["lvmsync", "--apply", "/root/lv.snapback", "/dev/vg/lv"];
        assert!(runs.contains(&through_ssh.map(String::from).to_vec()));
        let after_pipe = ["lvmsync", "info", "-"];
        assert!(runs.contains(&after_pipe.map(String::from).to_vec()));
        let refused = ["lvmsync", "verify", "--changes"].map(String::from);
        assert!(accepted(&refused).is_err());
    }

    #[test]
    fn every_subcommand_has_examples_of_itself_in_its_help() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(names, SUBCOMMANDS.map(|s| s.name));
        for sub in SUBCOMMANDS {
            assert!(sub.examples.len() >= 2, "{}", sub.name);
            for ex in sub.examples {
                let runs: Vec<Vec<String>> = whole_commands(ex.commands)
                    .iter()
                    .flat_map(|c| lvmsync_runs(c))
                    .collect();
                assert!(
                    runs.iter().any(|r| r.get(1).is_some_and(|w| w == sub.name)),
                    "{:?} does not run lvmsync {}",
                    ex.what,
                    sub.name
                );
            }
            let mut cmd = crate::cli::Cli::command();
            let cmd = cmd.find_subcommand_mut(sub.name).unwrap();
            let help = cmd.render_long_help().to_string();
            let short = cmd.render_help().to_string();
            for text in [help, short] {
                assert!(text.contains("\nExamples:\n"), "{text}");
                for line in sub.examples.iter().flat_map(|e| e.commands.iter()) {
                    assert!(text.contains(&format!("\n    {line}\n")), "{line}: {text}");
                }
                let more = format!("man 8 lvmsync-{}", sub.name);
                assert!(text.contains(&more), "{text}");
            }
        }
    }
}
