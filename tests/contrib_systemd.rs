//! The systemd units of contrib/systemd: `systemd-analyze verify` finds nothing to say about
//! them, and the service's command line, with the example configuration's values, is one
//! lvmsync accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use lvmsync::cli::{Cli, Config};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(contrib().join(name)).unwrap()
}

const SERVICE: &str = "lvmsync-replicate@.service";
const TIMER: &str = "lvmsync-replicate@.timer";
const INSTALLED: &str = "/usr/sbin/lvmsync";

/// `systemd-analyze verify` of the instance `test` of both units, copied to `dir` with the
/// service's ExecStart naming the lvmsync just built (verify wants an executable there);
/// its output, empty when it has no remark, or its failure.
fn verify(dir: &Path, service: &str) -> String {
    std::fs::write(
        dir.join(SERVICE),
        service.replace(INSTALLED, env!("CARGO_BIN_EXE_lvmsync")),
    )
    .unwrap();
    std::fs::write(dir.join(TIMER), read(TIMER)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("lvmsync-replicate@test.service"))
        .arg(dir.join("lvmsync-replicate@test.timer"))
        .output()
        .expect("systemd-analyze (package systemd; scripts/setup-host.sh installs it)");
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        said.push_str(&format!("\n(exit status {:?})", out.status.code()));
    }
    said
}

#[test]
fn units_verify_without_a_remark() {
    let dir = tempfile::tempdir().unwrap();
    let service = read(SERVICE);
    assert!(service.contains(INSTALLED));
    assert_eq!(verify(dir.path(), &service), "");
    // The check sees a mistake.
    let broken = service.replace("Type=oneshot", "Typ=oneshot");
    assert!(
        verify(dir.path(), &broken).contains("Unknown key 'Typ'"),
        "a misspelt key passes"
    );
}

/// `VAR=value` lines of an environment file, as systemd reads the simple ones.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("VAR=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// ExecStart's words with `$VAR` split on white space and `${VAR}` as one word, as systemd
/// expands them.
fn exec_start(service: &str, env: &[(String, String)]) -> Vec<String> {
    let line = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} is not in the example configuration"))
    };
    let mut words = vec![];
    for w in line.split_whitespace() {
        if let Some(k) = w.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            words.push(get(k));
        } else if let Some(k) = w.strip_prefix('$') {
            words.extend(get(k).split_whitespace().map(str::to_string));
        } else {
            words.push(w.to_string());
        }
    }
    words
}

#[test]
fn the_service_runs_a_command_line_lvmsync_accepts() {
    let env = env_file(&read("replicate.conf.example"));
    let words = exec_start(&read(SERVICE), &env);
    assert_eq!(words[0], INSTALLED);
    let config = Cli::try_parse_from(&words)
        .unwrap_or_else(|e| panic!("{words:?}: {e}"))
        .into_config()
        .unwrap();
    match config {
        Config::Replicate(c) => {
            assert_eq!((c.vg.as_str(), c.lv.as_str()), ("vg", "lv"));
            assert_eq!(c.dest.as_deref(), Some("backup.example.org:/dev/vg/lv"));
            assert!(c.wait);
            assert!(c.stream.compress.is_some(), "OPTIONS=-z is lost");
            assert_eq!(c.converge, None);
        }
        c => panic!("{c:?}"),
    }
}
