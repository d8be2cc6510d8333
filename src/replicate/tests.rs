//! The replication rounds against an LVM kept in memory and a destination that knows which
//! snapshot it holds: every crash point, overflowed snapshots, refused states.

use std::cell::RefCell;

use super::*;

/// LVM in memory: one volume group.
struct FakeLvm {
    lvs: RefCell<Vec<LvInfo>>,
    free: RefCell<u64>,
    thin: bool,
    log: RefCell<Vec<String>>,
}

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;

impl FakeLvm {
    fn new(thin: bool) -> Self {
        let origin = lv("lv", "", thin);
        FakeLvm {
            lvs: RefCell::new(vec![origin]),
            free: RefCell::new(1 << 30),
            thin,
            log: RefCell::new(vec![]),
        }
    }

    fn snapshots(&self) -> Vec<LvInfo> {
        let lvs = self.lvs.borrow();
        lvs.iter().filter(|l| l.origin == "lv").cloned().collect()
    }

    fn get_mut<T>(&self, full: &str, f: impl FnOnce(&mut LvInfo) -> T) -> Result<T> {
        let name = full.strip_prefix("vg/").expect("vg/ name");
        let mut lvs = self.lvs.borrow_mut();
        let l = lvs
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::Invalid(format!("{full}: no such LV")))?;
        Ok(f(l))
    }
}

fn lv(name: &str, origin: &str, thin: bool) -> LvInfo {
    LvInfo {
        vg: "vg".into(),
        name: name.into(),
        uuid: format!("uuid-{name}"),
        size_bytes: 256 * MIB,
        thin,
        origin: origin.into(),
        tags: vec![],
        time: "2024-01-01 00:00:00 +0000".into(),
        // LVM leaves thin snapshots inactive.
        dm_path: (origin.is_empty() || !thin).then(|| format!("/dev/mapper/vg-{name}")),
        invalid: false,
        fill_percent: (!thin && !origin.is_empty()).then_some(0.0),
    }
}

impl Manage for FakeLvm {
    fn lvs(&self, vg: &str) -> Result<Vec<LvInfo>> {
        assert_eq!(vg, "vg");
        Ok(self.lvs.borrow().clone())
    }

    fn vg_free(&self, _vg: &str) -> Result<(u64, u64)> {
        Ok((*self.free.borrow(), EXTENT))
    }

    fn create_snapshot(
        &self,
        _vg: &str,
        origin: &str,
        name: &str,
        size_bytes: Option<u64>,
        tag: &str,
    ) -> Result<()> {
        assert_eq!(
            size_bytes.is_none(),
            self.thin,
            "thin snapshots have no size"
        );
        if let Some(b) = size_bytes {
            *self.free.borrow_mut() -= b;
        }
        let mut s = lv(name, origin, self.thin);
        s.tags.push(tag.into());
        self.log
            .borrow_mut()
            .push(format!("create {name} {size_bytes:?}"));
        self.lvs.borrow_mut().push(s);
        Ok(())
    }

    fn retag(&self, full: &str, add: &[&str], del: &[&str]) -> Result<()> {
        self.get_mut(full, |l| {
            l.tags.retain(|t| !del.contains(&t.as_str()));
            l.tags.extend(add.iter().map(|t| t.to_string()));
        })
    }

    fn activate(&self, full: &str) -> Result<()> {
        self.get_mut(full, |l| {
            l.dm_path = Some(format!("/dev/mapper/vg-{}", l.name));
        })
    }

    fn remove(&self, full: &str) -> Result<()> {
        let name = full.strip_prefix("vg/").unwrap();
        self.log.borrow_mut().push(format!("remove {name}"));
        self.lvs.borrow_mut().retain(|l| l.name != name);
        Ok(())
    }
}

/// What the destination holds: the contents of a snapshot, or a mix left by an interrupted
/// send (of `to` over `from`; `from` is `None` for a whole copy).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Unknown,
    Holds(String),
    Mixed { from: Option<String>, to: String },
}

fn name_of(path: &Path) -> String {
    path.to_str()
        .unwrap()
        .strip_prefix("/dev/mapper/vg-")
        .unwrap()
        .to_string()
}

/// A destination that applies transfers as lvmsync does: changes only onto the base's contents,
/// with what an interrupted send of the same changes wrote already skipped.
struct FakeDest {
    content: Content,
    /// Interrupt the next send half way.
    fail_next: bool,
    sends: Vec<Transfer>,
}

impl FakeDest {
    fn new() -> Self {
        FakeDest {
            content: Content::Unknown,
            fail_next: false,
            sends: vec![],
        }
    }

    fn send(&mut self, t: &Transfer) -> Result<()> {
        self.sends.push(t.clone());
        let (from, to) = match t {
            Transfer::Full { snapshot } => (None, name_of(snapshot)),
            Transfer::Changes { base, data } => {
                let (base, data) = (name_of(base), name_of(data));
                let ok = match &self.content {
                    Content::Holds(h) => *h == base || *h == data,
                    Content::Mixed { from, to } => from.as_deref() == Some(&base) && *to == data,
                    Content::Unknown => false,
                };
                if !ok {
                    return Err(Error::Invalid(format!(
                        "destination is not a copy of {base}: {:?}",
                        self.content
                    )));
                }
                (Some(base), data)
            }
        };
        if std::mem::take(&mut self.fail_next) {
            self.content = Content::Mixed { from, to };
            return Err(Error::Invalid("connection lost".into()));
        }
        self.content = Content::Holds(to);
        Ok(())
    }
}

fn request() -> Request {
    Request {
        vg: "vg".into(),
        lv: "lv".into(),
        dest: "backup@host:/dev/vg/copy".into(),
        snapshot_size: None,
        verbosity: Verbosity::Quiet,
    }
}

fn run(lvm: &FakeLvm, dest: &mut FakeDest, stop_at: Option<Step>) -> Result<Outcome> {
    replicate(lvm, &request(), &mut |t| dest.send(t), &|s| {
        Some(s) == stop_at
    })
}

/// After a successful run: one snapshot, the base, which DEST holds; nothing pending.
fn assert_settled(lvm: &FakeLvm, dest: &FakeDest, outcome: &Outcome) {
    let snaps = lvm.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:#?}");
    let id = dest_id(&request().dest);
    assert_eq!(snaps[0].tags, [Role::Base.tag(&id)]);
    assert_eq!(dest.content, Content::Holds(snaps[0].name.clone()));
    match outcome {
        Outcome::Done { base, .. } => assert_eq!(*base, snaps[0].full_name()),
        o => panic!("{o:?}"),
    }
}

#[test]
fn rounds_send_a_whole_copy_then_changes_and_keep_one_base() {
    for thin in [false, true] {
        let lvm = FakeLvm::new(thin);
        let mut dest = FakeDest::new();
        let first = run(&lvm, &mut dest, None).unwrap();
        assert!(matches!(first, Outcome::Done { full: true, .. }));
        assert_settled(&lvm, &dest, &first);
        for round in 2..=3 {
            let o = run(&lvm, &mut dest, None).unwrap();
            assert!(matches!(o, Outcome::Done { full: false, .. }), "{o:?}");
            assert_settled(&lvm, &dest, &o);
            assert_eq!(lvm.snapshots()[0].name, format!("lv-lvmsync-{round}"));
        }
        assert_eq!(
            dest.sends[2],
            Transfer::Changes {
                base: "/dev/mapper/vg-lv-lvmsync-2".into(),
                data: "/dev/mapper/vg-lv-lvmsync-3".into()
            }
        );
    }
}

#[test]
fn a_run_stopped_after_any_step_is_finished_by_the_next() {
    for thin in [false, true] {
        for stop in [Step::Snapshot, Step::Send, Step::Retire, Step::Retag] {
            // Stopped in the first round (no base yet) and in a later one.
            for rounds_before in [0, 2] {
                let lvm = FakeLvm::new(thin);
                let mut dest = FakeDest::new();
                for _ in 0..rounds_before {
                    run(&lvm, &mut dest, None).unwrap();
                }
                assert_eq!(
                    run(&lvm, &mut dest, Some(stop)).unwrap(),
                    Outcome::Stopped(stop)
                );
                let o = run(&lvm, &mut dest, None)
                    .unwrap_or_else(|e| panic!("thin {thin}, {stop:?}, {rounds_before}: {e}"));
                assert_settled(&lvm, &dest, &o);
                // and rounds go on
                let o = run(&lvm, &mut dest, None).unwrap();
                assert!(matches!(o, Outcome::Done { full: false, .. }));
                assert_settled(&lvm, &dest, &o);
            }
        }
    }
}

#[test]
fn an_interrupted_send_is_finished_with_the_same_snapshot() {
    let lvm = FakeLvm::new(true);
    let mut dest = FakeDest::new();
    run(&lvm, &mut dest, None).unwrap();
    run(&lvm, &mut dest, None).unwrap();
    dest.fail_next = true;
    let e = run(&lvm, &mut dest, None).unwrap_err();
    assert_eq!(e.to_string(), "connection lost");
    assert_eq!(
        lvm.snapshots().len(),
        2,
        "the base and the pending snapshot"
    );
    // A new snapshot would find DEST neither the base's copy nor its own: the same one is sent.
    let o = run(&lvm, &mut dest, None).unwrap();
    assert_settled(&lvm, &dest, &o);
    assert_eq!(lvm.snapshots()[0].name, "lv-lvmsync-3");
    assert_eq!(dest.sends[2], dest.sends[3]);
}

#[test]
fn an_overflowed_classic_base_means_a_whole_copy() {
    let lvm = FakeLvm::new(false);
    let mut dest = FakeDest::new();
    run(&lvm, &mut dest, None).unwrap();
    lvm.get_mut("vg/lv-lvmsync-1", |l| l.invalid = true)
        .unwrap();
    let o = run(&lvm, &mut dest, None).unwrap();
    assert!(matches!(o, Outcome::Done { full: true, .. }), "{o:?}");
    assert_settled(&lvm, &dest, &o);
    assert!(matches!(dest.sends[1], Transfer::Full { .. }));
}

#[test]
fn an_overflowed_pending_snapshot_is_replaced_and_copied_whole() {
    let lvm = FakeLvm::new(false);
    let mut dest = FakeDest::new();
    run(&lvm, &mut dest, None).unwrap();
    dest.fail_next = true;
    run(&lvm, &mut dest, None).unwrap_err();
    lvm.get_mut("vg/lv-lvmsync-2", |l| l.invalid = true)
        .unwrap();
    let o = run(&lvm, &mut dest, None).unwrap();
    assert!(matches!(o, Outcome::Done { full: true, .. }), "{o:?}");
    assert_settled(&lvm, &dest, &o);
    assert!(lvm
        .log
        .borrow()
        .contains(&"remove lv-lvmsync-2".to_string()));
}

#[test]
fn states_no_run_leaves_are_refused_naming_the_snapshots() {
    let lvm = FakeLvm::new(true);
    let mut dest = FakeDest::new();
    run(&lvm, &mut dest, None).unwrap();
    let tag = Role::Base.tag(&dest_id(&request().dest));
    let mut other = lv("manual", "lv", true);
    other.tags.push(tag.clone());
    lvm.lvs.borrow_mut().push(other);
    let e = run(&lvm, &mut dest, None).unwrap_err().to_string();
    assert!(
        e.contains("several base snapshots") && e.contains("vg/lv-lvmsync-1, vg/manual"),
        "{e}"
    );
    assert!(e.contains(&tag), "{e}");
    assert_eq!(lvm.snapshots().len(), 2, "nothing created or removed");
}

#[test]
fn destinations_have_their_own_bases() {
    let lvm = FakeLvm::new(true);
    let (mut a, mut b) = (FakeDest::new(), FakeDest::new());
    let other = Request {
        dest: "/dev/vg2/copy".into(),
        ..request()
    };
    run(&lvm, &mut a, None).unwrap();
    replicate(&lvm, &other, &mut |t| b.send(t), &|_| false).unwrap();
    run(&lvm, &mut a, None).unwrap();
    assert_eq!(lvm.snapshots().len(), 2);
    let st = status(&lvm, "vg", "lv").unwrap();
    let summary: Vec<(String, String)> = st
        .iter()
        .map(|d| (d.dest.clone(), d.base.as_ref().unwrap().name.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("/dev/vg2/copy".to_string(), "lv-lvmsync-2".to_string()),
            ("backup@host:/dev/vg/copy".into(), "lv-lvmsync-3".into())
        ]
    );
    assert!(st.iter().all(|d| d.unfinished.is_empty()));
}

#[test]
fn classic_snapshots_are_sized_and_refused_without_room() {
    let lvm = FakeLvm::new(false);
    let mut dest = FakeDest::new();
    run(&lvm, &mut dest, None).unwrap();
    // 20% of 256 MiB is 51.2 MiB, less than the least default of 64 MiB.
    assert_eq!(
        lvm.log.borrow()[0],
        format!("create lv-lvmsync-1 Some({})", 64 * MIB)
    );
    *lvm.free.borrow_mut() = 40 * MIB;
    let e = run(&lvm, &mut dest, None).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "volume group vg has {} bytes free, too few for a {}-byte snapshot of vg/lv; give --snapshot-size or extend the volume group",
            40 * MIB,
            64 * MIB
        )
    );
    assert_eq!(lvm.snapshots().len(), 1);
    let req = Request {
        snapshot_size: Some(SnapshotSize::parse("10M").unwrap()),
        ..request()
    };
    replicate(&lvm, &req, &mut |t| dest.send(t), &|_| false).unwrap();
    assert_eq!(
        lvm.log.borrow()[1],
        format!("create lv-lvmsync-2 Some({})", 12 * MIB)
    );
}

#[test]
fn snapshot_sizes_parse() {
    use SnapshotSize::*;
    assert_eq!(SnapshotSize::parse("512"), Ok(Bytes(512 * MIB)));
    assert_eq!(SnapshotSize::parse("2G"), Ok(Bytes(2 << 30)));
    assert_eq!(SnapshotSize::parse("4096b"), Ok(Bytes(4096)));
    assert_eq!(SnapshotSize::parse("25%"), Ok(Percent(25)));
    for bad in ["", "0", "x", "5X", "0%", "101%", "-1G", "99999999999999T"] {
        assert!(SnapshotSize::parse(bad).is_err(), "{bad}");
    }
    // the default: at least 64 MiB, at most the LV; rounded up to whole extents
    assert_eq!(
        DEFAULT_SNAPSHOT_SIZE.bytes(1000 * MIB, EXTENT, true),
        200 * MIB
    );
    assert_eq!(Percent(20).bytes(1001 * MIB, EXTENT, true), 204 * MIB);
    assert_eq!(
        DEFAULT_SNAPSHOT_SIZE.bytes(100 * MIB, EXTENT, true),
        64 * MIB
    );
    assert_eq!(
        DEFAULT_SNAPSHOT_SIZE.bytes(32 * MIB, EXTENT, true),
        32 * MIB
    );
    assert_eq!(Percent(20).bytes(32 * MIB, EXTENT, false), 8 * MIB);
}

#[test]
fn destination_ids_are_tags_lvm_accepts_and_read_back() {
    for dest in [
        "/dev/vg/copy",
        "root@[fd00::2]:/dev/vg/lv",
        "host:/dev/disk/by-id/a b=c%",
    ] {
        let id = dest_id(dest);
        let tag = Role::Pending.tag(&id);
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+/=!:&#".contains(&b)),
            "{tag}"
        );
        assert_eq!(dest_of_id(&id).as_deref(), Some(dest));
        assert_eq!(Role::of_tag(&tag), Some((Role::Pending, id.as_str())));
    }
    assert_eq!(dest_id("root@b:/dev/x"), "root=40b:/dev/x");
    let long = format!("host:/{}", "x".repeat(200));
    let id = dest_id(&long);
    assert!(id.starts_with('#') && Role::Retired.tag(&id).len() <= MAX_TAG);
    assert_eq!(dest_of_id(&id), None);
    assert_ne!(dest_id(&long), dest_id(&format!("{long}y")));
}

#[test]
fn a_second_lock_on_one_lv_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let held = LvLock::take(dir.path(), "abc-DEF", "vg/lv", false).unwrap();
    let e = LvLock::take(dir.path(), "abc-DEF", "vg/lv", false)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("another lvmsync replicate of vg/lv is running (it holds ")
            && e.ends_with("abc-DEF.lock); --wait waits for it"),
        "{e}"
    );
    LvLock::take(dir.path(), "other", "vg/other", false).unwrap();
    drop(held);
    LvLock::take(dir.path(), "abc-DEF", "vg/lv", false).unwrap();
}

#[test]
fn volumes_are_named_vg_slash_lv() {
    assert_eq!(
        split_lv("/dev/vg/lv").unwrap(),
        ("vg".to_string(), "lv".to_string())
    );
    assert_eq!(split_lv("vg/lv").unwrap().1, "lv");
    for bad in ["lv", "vg/", "/lv", "vg/a/b"] {
        assert!(matches!(split_lv(bad), Err(Error::Usage(_))), "{bad}");
    }
}

mod converging {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::converge::*;
    use super::*;

    #[test]
    fn until_parses_sizes_and_times() {
        for (s, want) in [
            ("64M", Until::Bytes(64 * MIB)),
            ("64m", Until::Bytes(64 * MIB)),
            ("512K", Until::Bytes(512 << 10)),
            ("1G", Until::Bytes(1 << 30)),
            ("2t", Until::Bytes(2 << 40)),
            ("0b", Until::Bytes(0)),
            ("100B", Until::Bytes(100)),
            ("5s", Until::Time(Duration::from_secs(5))),
            ("0.5s", Until::Time(Duration::from_millis(500))),
            ("250ms", Until::Time(Duration::from_millis(250))),
            ("250MS", Until::Time(Duration::from_millis(250))),
        ] {
            assert_eq!(Until::parse(s), Ok(want), "{s}");
        }
        for (s, says) in [
            ("5", "give a unit"),
            ("", "give a unit"),
            ("s", "expected a size"),
            ("5x", "expected a size"),
            ("1.5M", "expected a size"),
            ("-5s", "expected a size"),
            ("5 s", "expected a size"),
            ("1..2s", "expected a size"),
            ("99999999999999999999M", "expected a size"),
            ("20000000t", "expected a size"),
            ("1e400s", "expected a size"),
        ] {
            let e = Until::parse(s).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    fn pass(bytes: u64, ms: u64) -> Pass {
        Pass {
            bytes,
            elapsed: Duration::from_millis(ms),
            full: false,
            base: "vg/lv-lvmsync-1".into(),
        }
    }

    #[test]
    fn a_pass_is_small_when_within_until_inclusive() {
        let size = Until::Bytes(64 * MIB);
        assert!(size.reached_by(&pass(64 * MIB, 60_000)));
        assert!(size.reached_by(&pass(0, 60_000)));
        assert!(!size.reached_by(&pass(64 * MIB + 1, 1)));
        let time = Until::Time(Duration::from_secs(5));
        assert!(time.reached_by(&pass(u64::MAX, 5000)));
        assert!(!time.reached_by(&pass(0, 5001)));
    }

    /// A run against a log file that the passes (from Rust) and the hooks (real `sh -c`
    /// commands) append to, in the order they ran.
    struct Bench {
        _dir: tempfile::TempDir,
        log: PathBuf,
    }

    impl Bench {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("log");
            std::fs::write(&log, "").unwrap();
            Bench { _dir: dir, log }
        }

        fn note(&self, line: &str) {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.log)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        }

        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.log)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }

        /// A hook command that logs its environment and ends with `status`.
        fn hook(&self, status: i32) -> String {
            format!(
                "echo \"$LVMSYNC_HOOK $LVMSYNC_PASS $LVMSYNC_LV $LVMSYNC_DEST ${{LVMSYNC_BASE-no-base}}\" >> '{}'; exit {status}",
                self.log.display()
            )
        }

        /// Converges with passes of the given sizes (a size of `None` fails the pass), the
        /// until and hooks of `plan`; gives the result and the events' names.
        fn run(
            &self,
            plan: &ConvergePlan,
            sizes: &[Option<u64>],
        ) -> (Result<Converged>, Vec<String>) {
            let env = HookEnv {
                lv: "vg/lv".into(),
                dest: "b:/dev/vg/lv".into(),
            };
            let mut pass = |n: u32| {
                self.note(&format!("pass {n}"));
                match sizes.get(n as usize - 1).copied().flatten() {
                    Some(bytes) => Ok(PassResult::Done {
                        bytes,
                        full: n == 1,
                        base: format!("vg/lv-lvmsync-{n}"),
                    }),
                    None => Err(Error::Invalid("connection lost".into())),
                }
            };
            let mut events = vec![];
            let mut report = |e: Event<'_>| {
                events.push(match e {
                    Event::Pass {
                        number,
                        pass,
                        last,
                        small,
                    } => format!("pass {number} {} last={last} small={small}", pass.bytes),
                    Event::HookStart { hook, .. } => format!("start {}", hook.name()),
                    Event::HookEnd { hook, status, .. } => format!("end {} {status}", hook.name()),
                    Event::Downtime { final_pass, .. } => {
                        format!("downtime {}", final_pass.base)
                    }
                })
            };
            let r = converge(plan, &env, &mut pass, &mut run_hook, &mut report);
            (r, events)
        }
    }

    fn plan(until: u64, final_hook: Option<String>, after_hook: Option<String>) -> ConvergePlan {
        ConvergePlan {
            until: Until::Bytes(until),
            max_passes: 4,
            final_hook,
            after_hook,
        }
    }

    #[test]
    fn passes_repeat_until_one_is_small_then_final_hook_last_pass_after_hook() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(0)), Some(b.hook(0)));
        let (r, events) = b.run(&p, &[Some(10_000), Some(500), Some(100), Some(7)]);
        match r.unwrap() {
            Converged::CutOver {
                passes, final_pass, ..
            } => {
                assert_eq!(
                    passes.iter().map(|p| p.bytes).collect::<Vec<_>>(),
                    [10_000, 500, 100]
                );
                assert!(passes[0].full && !final_pass.full);
                assert_eq!(final_pass.bytes, 7);
                assert_eq!(final_pass.base, "vg/lv-lvmsync-4");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            b.lines(),
            [
                "pass 1",
                "pass 2",
                "pass 3",
                "final 4 vg/lv b:/dev/vg/lv no-base",
                "pass 4",
                "after 4 vg/lv b:/dev/vg/lv vg/lv-lvmsync-4",
            ]
        );
        assert_eq!(
            events,
            [
                "pass 1 10000 last=false small=false",
                "pass 2 500 last=false small=false",
                "pass 3 100 last=false small=true",
                "start final",
                "end final exit status 0",
                "pass 4 7 last=true small=true",
                "start after",
                "end after exit status 0",
                "downtime vg/lv-lvmsync-4",
            ]
        );
    }

    #[test]
    fn a_first_small_pass_goes_straight_to_the_cut_over_and_hooks_are_optional() {
        let b = Bench::new();
        let (r, events) = b.run(&plan(100, None, None), &[Some(100), Some(300)]);
        assert!(matches!(r.unwrap(), Converged::CutOver { ref passes, .. } if passes.len() == 1));
        assert_eq!(b.lines(), ["pass 1", "pass 2"]);
        // The final pass is reported as it is, even larger than --until.
        assert_eq!(
            events,
            [
                "pass 1 100 last=false small=true",
                "pass 2 300 last=true small=false",
                "downtime vg/lv-lvmsync-2",
            ]
        );
    }

    #[test]
    fn no_small_pass_within_max_passes_fails_without_running_a_hook() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(0)), Some(b.hook(0)));
        let (r, events) = b.run(&p, &[Some(1000); 9]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("vg/lv did not converge: each of 4 passes was larger than --until 100 B (the last sent 1000 B in "),
            "{e}"
        );
        assert!(
            e.contains(
                "no hook was run and nothing was stopped; b:/dev/vg/lv holds vg/lv-lvmsync-4"
            ),
            "{e}"
        );
        assert_eq!(b.lines(), ["pass 1", "pass 2", "pass 3", "pass 4"]);
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn a_failing_final_hook_ends_the_run_before_the_last_pass() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(3)), Some(b.hook(0)));
        let (r, events) = b.run(&p, &[Some(1000), Some(10), Some(1)]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the final hook failed (exit status 3): echo"),
            "{e}"
        );
        assert!(
            e.ends_with("the final pass was not made and the after hook not run; what the hook stopped may be stopped; b:/dev/vg/lv holds vg/lv-lvmsync-2 (pass 2)"),
            "{e}"
        );
        assert_eq!(
            b.lines(),
            ["pass 1", "pass 2", "final 3 vg/lv b:/dev/vg/lv no-base"]
        );
        assert_eq!(events.last().unwrap(), "end final exit status 3");
    }

    #[test]
    fn a_final_hook_killed_or_not_started_fails_too() {
        let b = Bench::new();
        let p = plan(100, Some("kill -TERM $$".into()), None);
        let (r, _) = b.run(&p, &[Some(1), Some(1)]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the final hook failed (killed by signal 15)"),
            "{e}"
        );
        assert_eq!(b.lines(), ["pass 1"]);
        // A hook runner that cannot start sh.
        let env = HookEnv {
            lv: "vg/lv".into(),
            dest: "d".into(),
        };
        let mut passes = 0;
        let r = converge(
            &p,
            &env,
            &mut |_| {
                passes += 1;
                Ok(PassResult::Done {
                    bytes: 0,
                    full: false,
                    base: "vg/s".into(),
                })
            },
            &mut |_, _| HookStatus::NotStarted("No such file or directory".into()),
            &mut |_| {},
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with(
                "the final hook failed (sh could not be started: No such file or directory)"
            ),
            "{e}"
        );
        assert_eq!(passes, 1);
    }

    #[test]
    fn a_failing_last_pass_runs_no_after_hook() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(0)), Some(b.hook(0)));
        let (r, events) = b.run(&p, &[Some(10), None]);
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "the final pass failed: connection lost; the after hook was not run, and what the final hook stopped may be stopped; run the same command again to finish the copy"
        );
        assert_eq!(
            b.lines(),
            ["pass 1", "final 2 vg/lv b:/dev/vg/lv no-base", "pass 2"]
        );
        assert!(!events
            .iter()
            .any(|e| e.contains("after") || e.contains("downtime")));
    }

    #[test]
    fn a_failing_after_hook_fails_the_run_with_the_copy_complete() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(0)), Some(b.hook(1)));
        let (r, events) = b.run(&p, &[Some(10), Some(5)]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the after hook failed (exit status 1): echo"),
            "{e}"
        );
        assert!(
            e.ends_with("the copy is complete: b:/dev/vg/lv holds vg/lv-lvmsync-2"),
            "{e}"
        );
        assert_eq!(
            b.lines(),
            [
                "pass 1",
                "final 2 vg/lv b:/dev/vg/lv no-base",
                "pass 2",
                "after 2 vg/lv b:/dev/vg/lv vg/lv-lvmsync-2"
            ]
        );
        assert_eq!(events.last().unwrap(), "downtime vg/lv-lvmsync-2");
    }

    #[test]
    fn a_pass_stopped_after_a_step_stops_the_run_before_any_hook() {
        let b = Bench::new();
        let p = plan(100, Some(b.hook(0)), Some(b.hook(0)));
        let env = HookEnv {
            lv: "vg/lv".into(),
            dest: "d".into(),
        };
        let r = converge(
            &p,
            &env,
            &mut |_| Ok(PassResult::Stopped(Step::Send)),
            &mut run_hook,
            &mut |_| {},
        );
        assert_eq!(r.unwrap(), Converged::Stopped(Step::Send));
        assert_eq!(b.lines(), Vec::<String>::new());
    }

    /// The passes as real rounds against LVM in memory: each rotates the base, one base is
    /// left, and DEST holds it.
    #[test]
    fn passes_are_replicate_rounds() {
        for thin in [false, true] {
            let lvm = FakeLvm::new(thin);
            let mut dest = FakeDest::new();
            let b = Bench::new();
            let p = plan(100, Some(b.hook(0)), Some(b.hook(0)));
            let env = HookEnv {
                lv: "vg/lv".into(),
                dest: request().dest,
            };
            // The whole volume first, then changes shrinking as a writer slows down.
            let sizes = [256 * MIB, 4096, 100, 0];
            let mut pass = |n: u32| {
                b.note(&format!("pass {n}"));
                match replicate(&lvm, &request(), &mut |t| dest.send(t), &|_| false)? {
                    Outcome::Done { base, full } => Ok(PassResult::Done {
                        bytes: sizes[n as usize - 1],
                        full,
                        base,
                    }),
                    Outcome::Stopped(s) => Ok(PassResult::Stopped(s)),
                }
            };
            let r = converge(&p, &env, &mut pass, &mut run_hook, &mut |_| {}).unwrap();
            let Converged::CutOver {
                passes, final_pass, ..
            } = r
            else {
                panic!("{r:?}");
            };
            assert_eq!(passes.len(), 3);
            assert!(passes[0].full && !passes[1].full && !final_pass.full);
            assert_eq!(final_pass.base, "vg/lv-lvmsync-4");
            assert_settled(
                &lvm,
                &dest,
                &Outcome::Done {
                    base: final_pass.base.clone(),
                    full: false,
                },
            );
            assert_eq!(dest.sends.len(), 4);
            assert_eq!(
                b.lines(),
                [
                    "pass 1".to_string(),
                    "pass 2".into(),
                    "pass 3".into(),
                    format!("final 4 vg/lv {} no-base", request().dest),
                    "pass 4".into(),
                    format!("after 4 vg/lv {} vg/lv-lvmsync-4", request().dest),
                ]
            );
        }
    }
}
