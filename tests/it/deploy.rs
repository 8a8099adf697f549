//! The systemd units in deploy/systemd/ pass `systemd-analyze verify` (Debian's systemd
//! package; `scripts/test` installs it) with no warning, run against the binary under test.

use std::fs;
use std::path::Path;
use std::process::Command;

/// Runs `systemd-analyze verify` on `units` in `dir`; its output (empty when all is well).
fn analyze(dir: &Path, units: &[String]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut units = Vec::new();
    for e in fs::read_dir(&src).expect("deploy/systemd") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&path).expect("unit");
        // The binary under test stands in for the installed one.
        let text = text.replace("/usr/bin/pulpdist", env!("CARGO_BIN_EXE_pulpdist"));
        fs::write(tmp.path().join(&name), text).expect("copy");
        // A template is checked through an instance of it.
        units.push(format!("./{}", name.replace("@.", "@debian.")));
    }
    units.sort();
    assert!(units.len() >= 9, "{units:?}");
    let (ok, out) = analyze(tmp.path(), &units);
    assert!(ok && out.trim().is_empty(), "{out}");
    // The check can fail: a unit with a key systemd does not know is reported.
    fs::write(
        tmp.path().join("bad.service"),
        "[Service]\nExecStart=/bin/true\nBogus=1\n",
    )
    .expect("bad unit");
    let (_, out) = analyze(tmp.path(), &["./bad.service".to_string()]);
    assert!(out.contains("Bogus"), "{out}");
}
