//! Thin-pool status parsing (the held metadata root is field 7) and the metadata snapshot guard.

mod common;

use common::thin::FIXTURES;
use lvmsync::source::thin::guard::parse_pool_status;
use lvmsync::source::thin::ThinError;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn captured_pool_status_lines_parse() {
    let before = parse_pool_status("vg0-pool-tpool", &fixture("pool-status-before.txt")).unwrap();
    assert_eq!(before.held_metadata_root, None);
    assert_eq!(before.transaction_id, 2);
    assert_eq!(before.mode, "rw");
    let held = parse_pool_status("vg0-pool-tpool", &fixture("pool-status-held.txt")).unwrap();
    // The held line's seventh field is the metadata snapshot block.
    let field7: u64 = fixture("pool-status-held.txt")
        .split_whitespace()
        .nth(6)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(held.held_metadata_root, Some(field7));
    let released =
        parse_pool_status("vg0-pool-tpool", &fixture("pool-status-released.txt")).unwrap();
    assert_eq!(released.held_metadata_root, None);
}

#[test]
fn failed_and_foreign_status_lines_are_errors() {
    for (line, why) in [
        ("0 131072 thin-pool Fail", "failed"),
        ("0 131072 thin-pool Error", "cannot read"),
        ("0 131072 linear", "not a thin-pool"),
        ("0 262144 thin 1 2", "not a thin-pool"),
        ("0 131072 thin-pool 2 113/1024 133/1024", "too few"),
        (
            "0 131072 thin-pool 2 113/1024 133/1024 x rw",
            "held metadata root",
        ),
        ("0 131072 thin-pool 2 113-1024 133/1024 - rw", "USED/TOTAL"),
        ("", "not a thin-pool"),
    ] {
        let err = parse_pool_status("p", line).unwrap_err();
        assert!(matches!(err, ThinError::PoolStatus { .. }), "{line}: {err}");
        assert!(err.to_string().contains(why), "{line}: {err}");
    }
}

// ---- the guard itself, against a stand-in `dmsetup` that keeps a pool's held root in a file ----

use lvmsync::lvm::DevNum;
use lvmsync::source::thin::guard::ReadOnlyThinDevice;
use lvmsync::source::thin::MetadataSnapGuard;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Behaves like dmsetup for `status POOL` and `message POOL 0 reserve_metadata_snap|
/// release_metadata_snap`: the held root lives in `state-POOL` ("-" when none); a `race-POOL`
/// file makes status say "-" while reserving fails with EBUSY (someone else was faster). A
/// device made by `create --readonly NAME --table TABLE` is the file `dev-NAME` holding its
/// table, which `remove [--deferred] NAME` deletes; `devlog-NAME` lists both commands.
const FAKE_DMSETUP: &str = r#"#!/bin/sh
dir=$(dirname "$0")
pool=$2
echo "$*" >> "$dir/log-$pool"
st=$(cat "$dir/state-$pool" 2>/dev/null || echo -)
case "$1" in
status)
    echo "0 131072 thin-pool 2 113/1024 133/1024 $st rw discard_passdown queue_if_no_space - 256"
    ;;
message)
    case "$4" in
    reserve_metadata_snap)
        if [ "$st" != - ] || [ -e "$dir/race-$pool" ]; then
            echo "device-mapper: message ioctl on $pool  failed: Device or resource busy" >&2
            echo "Command failed." >&2
            exit 1
        fi
        echo 61 > "$dir/state-$pool" ;;
    release_metadata_snap)
        if [ "$st" = - ]; then
            echo "device-mapper: message ioctl on $pool  failed: Invalid argument" >&2
            exit 1
        fi
        echo - > "$dir/state-$pool" ;;
    *) exit 1 ;;
    esac
    ;;
create)
    # create --readonly NAME --table TABLE
    [ "$2" = --readonly ] && [ "$4" = --table ] || exit 1
    echo "$5" > "$dir/dev-$3"
    echo "$*" >> "$dir/devlog-$3" ;;
mknodes)
    [ -e "$dir/dev-$2" ] || exit 1 ;;
remove)
    if [ "$2" = --deferred ]; then name=$3; else name=$2; fi
    [ -e "$dir/dev-$name" ] || { echo "Device does not exist." >&2; exit 1; }
    rm "$dir/dev-$name"
    echo "$*" >> "$dir/devlog-$name" ;;
*) exit 1 ;;
esac
"#;

/// Puts the stand-in dmsetup first on PATH (once per test process; child processes inherit it).
fn fake_dmsetup() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(dir) = std::env::var("LVMSYNC_FAKE_DMSETUP_DIR") {
            return PathBuf::from(dir);
        }
        let dir = tempfile::tempdir().unwrap().keep();
        let script = dir.join("dmsetup");
        std::fs::write(&script, FAKE_DMSETUP).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        std::env::set_var("LVMSYNC_FAKE_DMSETUP_DIR", &dir);
        dir
    })
}

fn state(pool: &str) -> String {
    std::fs::read_to_string(fake_dmsetup().join(format!("state-{pool}")))
        .unwrap_or_else(|_| "-".into())
        .trim()
        .to_string()
}

fn set_state(pool: &str, s: &str) {
    std::fs::write(fake_dmsetup().join(format!("state-{pool}")), s).unwrap();
}

fn log(pool: &str) -> String {
    std::fs::read_to_string(fake_dmsetup().join(format!("log-{pool}"))).unwrap_or_default()
}

/// The pool device of the read-only views made in these tests.
const DEVICE_POOL: DevNum = DevNum {
    major: 253,
    minor: 4,
};

fn devlog(name: &str) -> String {
    std::fs::read_to_string(fake_dmsetup().join(format!("devlog-{name}"))).unwrap_or_default()
}

/// A read-only view of a thin device: made with the pool and device id in a `thin` table, and
/// removed when dropped, or by `remove`, once.
#[test]
fn read_only_views_are_made_and_removed() {
    let dir = fake_dmsetup();
    let name = format!("lvmsync-thin5-{}", std::process::id());
    let view = ReadOnlyThinDevice::create(DEVICE_POOL, 5, 131072).unwrap();
    assert_eq!(view.name(), name);
    assert_eq!(view.path(), Path::new("/dev/mapper").join(&name));
    let dev = dir.join(format!("dev-{name}"));
    assert_eq!(
        std::fs::read_to_string(&dev).unwrap(),
        "0 131072 thin 253:4 5\n"
    );
    drop(view);
    assert!(!dev.exists());
    assert_eq!(
        devlog(&name),
        format!("create --readonly {name} --table 0 131072 thin 253:4 5\nremove {name}\n")
    );

    let name = format!("lvmsync-thin6-{}", std::process::id());
    let view = ReadOnlyThinDevice::create(DEVICE_POOL, 6, 8).unwrap();
    view.remove().unwrap();
    assert_eq!(devlog(&name).matches("remove").count(), 1);
    // A panic while it exists removes it during unwinding.
    let name = format!("lvmsync-thin8-{}", std::process::id());
    let r = std::panic::catch_unwind(|| {
        let _v = ReadOnlyThinDevice::create(DEVICE_POOL, 8, 8).unwrap();
        assert!(fake_dmsetup().join(format!("dev-{name}")).exists());
        panic!("reading failed");
    });
    assert!(r.is_err());
    assert!(!dir.join(format!("dev-{name}")).exists());
}

#[test]
fn guard_reserves_reads_field_7_and_releases_on_drop() {
    fake_dmsetup();
    let pool = "vg0-a-tpool";
    let g = MetadataSnapGuard::reserve(pool).unwrap();
    assert_eq!(g.held_root(), 61);
    assert_eq!(state(pool), "61");
    drop(g);
    assert_eq!(state(pool), "-");
    assert_eq!(log(pool).matches("release_metadata_snap").count(), 1);
}

#[test]
fn explicit_release_releases_once() {
    fake_dmsetup();
    let pool = "vg0-b-tpool";
    let g = MetadataSnapGuard::reserve(pool).unwrap();
    g.release().unwrap();
    assert_eq!(state(pool), "-");
    assert_eq!(log(pool).matches("release_metadata_snap").count(), 1);
}

#[test]
fn someone_elses_snapshot_is_refused_and_left_alone() {
    fake_dmsetup();
    let pool = "vg0-c-tpool";
    set_state(pool, "77");
    let err = MetadataSnapGuard::reserve(pool).unwrap_err();
    assert!(matches!(err, ThinError::AlreadyHeld { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "pool vg0-c-tpool already has a held metadata snapshot (another tool is using it); not \
         touching it"
    );
    assert_eq!(state(pool), "77");
    assert!(!log(pool).contains("reserve_metadata_snap"));
    assert!(!log(pool).contains("release_metadata_snap"));
}

#[test]
fn losing_the_race_to_reserve_is_refused_and_left_alone() {
    let dir = fake_dmsetup();
    let pool = "vg0-d-tpool";
    std::fs::write(dir.join(format!("race-{pool}")), "").unwrap();
    let err = MetadataSnapGuard::reserve(pool).unwrap_err();
    assert!(matches!(err, ThinError::AlreadyHeld { .. }), "{err}");
    assert!(log(pool).contains("reserve_metadata_snap"));
    assert!(!log(pool).contains("release_metadata_snap"));
}

#[test]
fn dmsetup_failures_are_reported() {
    fake_dmsetup();
    // A snapshot that vanished meanwhile: the explicit release reports dmsetup's error.
    let pool = "vg0-e-tpool";
    let g = MetadataSnapGuard::reserve(pool).unwrap();
    set_state(pool, "-");
    let err = g.release().unwrap_err();
    assert!(matches!(err, ThinError::Dmsetup { .. }), "{err}");
    assert!(err.to_string().contains("release_metadata_snap"), "{err}");
    assert!(err.to_string().contains("Invalid argument"), "{err}");
}

#[test]
fn panic_while_held_releases_during_unwind() {
    fake_dmsetup();
    let pool = "vg0-f-tpool";
    let r = std::panic::catch_unwind(|| {
        let _g = MetadataSnapGuard::reserve(pool).unwrap();
        assert_eq!(state(pool), "61");
        panic!("reading failed");
    });
    assert!(r.is_err());
    assert_eq!(state(pool), "-");
}

/// In the child process (see below) this holds a snapshot until a signal ends the process; run
/// directly, it checks that a guard held across a thread boundary is released when dropped there.
#[test]
fn guard_signal_child() {
    fake_dmsetup();
    if let Ok(pool) = std::env::var("LVMSYNC_GUARD_CHILD_POOL") {
        let _g = MetadataSnapGuard::reserve(&pool).unwrap();
        // A device made afterwards is removed first.
        let _d = ReadOnlyThinDevice::create(DEVICE_POOL, 7, 2048).unwrap();
        println!("ready");
        std::thread::sleep(std::time::Duration::from_secs(60));
        panic!("no signal arrived");
    }
    let pool = "vg0-g-tpool";
    let g = MetadataSnapGuard::reserve(pool).unwrap();
    std::thread::spawn(move || drop(g)).join().unwrap();
    assert_eq!(state(pool), "-");
}

/// Starts `guard_signal_child` holding a snapshot of `pool`, with the `ignored` signals ignored
/// and the others at their default action (whatever this test process inherited), and waits
/// until it holds the snapshot.
fn spawn_guard_child(dir: &Path, pool: &str, ignored: &[libc::c_int]) -> std::process::Child {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let ignored = ignored.to_vec();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "guard_signal_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LVMSYNC_GUARD_CHILD_POOL", pool)
    .env("LVMSYNC_FAKE_DMSETUP_DIR", dir)
    .stdout(std::process::Stdio::piped());
    // SAFETY: signal() is async-signal-safe, so it may run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let action = if ignored.contains(&sig) {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, action);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = false;
    for line in out.lines() {
        // libtest prints "test NAME ... " before the test's own output.
        if line.unwrap().trim_end().ends_with("ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child never held the snapshot");
    child
}

#[test]
fn signals_release_the_snapshot_and_exit_with_128_plus_signal() {
    let dir = fake_dmsetup();
    for (i, sig) in [
        rustix::process::Signal::TERM,
        rustix::process::Signal::INT,
        rustix::process::Signal::HUP,
    ]
    .into_iter()
    .enumerate()
    {
        let pool = format!("vg0-sig{i}-tpool");
        let mut child = spawn_guard_child(dir, &pool, &[]);
        assert_eq!(state(&pool), "61");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + sig.as_raw()), "{sig:?}");
        assert_eq!(state(&pool), "-", "{sig:?}");
        assert_eq!(log(&pool).matches("release_metadata_snap").count(), 1);
        // Its reading threads may still have the device open: removed at the last close.
        let name = format!("lvmsync-thin7-{}", child.id());
        assert!(!dir.join(format!("dev-{name}")).exists(), "{sig:?}");
        assert!(
            devlog(&name).ends_with(&format!("remove --deferred {name}\n")),
            "{}",
            devlog(&name)
        );
    }
}

/// The whole live path: reserve (the stand-in reports held root 61, as the real pool did when
/// the fixture was captured), read the held copy of the superblock there, release.
#[test]
fn live_delta_reads_the_held_snapshot_and_releases_it() {
    use common::thin::{gunzip_fixture, parse_thin_delta, read_block, write_block, SB_SALT};
    fake_dmsetup();
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    // What the kernel does on reserve_metadata_snap: copy the superblock to the held block
    // and record that block in the superblock.
    let mut sb = read_block(&meta, 0);
    write_block(&meta, 61, &mut sb.clone(), SB_SALT);
    sb[56..64].copy_from_slice(&61u64.to_le_bytes());
    write_block(&meta, 0, &mut sb, SB_SALT);

    let pool = "vg0-live-tpool";
    let d = lvmsync::source::thin::delta_live(pool, &meta, 2, 1).unwrap();
    let xml = std::fs::read_to_string(format!("{FIXTURES}/thin_delta.xml")).unwrap();
    assert_eq!(d.extents, parse_thin_delta(&xml).1);
    assert_eq!(state(pool), "-");
    assert_eq!(log(pool).matches("release_metadata_snap").count(), 1);

    // A failing read still releases.
    let pool = "vg0-live2-tpool";
    let err = lvmsync::source::thin::delta_live(pool, &meta, 2, 9).unwrap_err();
    assert!(
        matches!(err, ThinError::DeviceNotFound { dev_id: 9, .. }),
        "{err}"
    );
    assert_eq!(state(pool), "-");
    assert_eq!(log(pool).matches("release_metadata_snap").count(), 1);
}

/// A signal ignored when the process started (`nohup` ignores SIGHUP, a shell ignores SIGINT in
/// a background job) stays ignored: it neither ends the process nor releases its snapshot.
#[test]
fn signals_ignored_at_start_stay_ignored() {
    use rustix::process::{kill_process, Pid, Signal};
    let dir = fake_dmsetup();
    let pool = "vg0-nohup-tpool";
    let mut child = spawn_guard_child(dir, pool, &[libc::SIGHUP, libc::SIGINT]);
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, Signal::HUP).unwrap();
    kill_process(pid, Signal::INT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "an ignored signal ended the process"
    );
    assert_eq!(state(pool), "61");
    kill_process(pid, Signal::TERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    assert_eq!(state(pool), "-");
}

/// With a PATH that lacks it (cron runs jobs with PATH=/usr/bin:/bin), dmsetup is still found
/// where admin tools live, as LVM discovery finds it: reserving runs it and reports what it said.
#[test]
fn dmsetup_is_found_without_it_on_path() {
    if let Ok(pool) = std::env::var("LVMSYNC_GUARD_RESERVE_POOL") {
        let err = MetadataSnapGuard::reserve(&pool).unwrap_err();
        println!("reserve: {err}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dmsetup_is_found_without_it_on_path",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PATH", "/nonexistent")
        .env("LVMSYNC_GUARD_RESERVE_POOL", "lvmsync-test-no-such-pool")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = stdout
        .lines()
        .find_map(|l| l.split_once("reserve: "))
        .map(|(_, said)| said)
        .unwrap_or_else(|| panic!("the child did not try to reserve: {stdout}"));
    // The system's dmsetup ran (and failed: there is no such pool).
    assert!(
        said.starts_with("`dmsetup status lvmsync-test-no-such-pool` failed: "),
        "{said}"
    );
    assert!(
        !said.contains("No such file or directory (os error 2)"),
        "{said}"
    );
}
