//! Differential test: for each rule set, the paths our filter selects from a tree equal the
//! paths real `rsync -rl --dry-run` selects with the same `--filter` rules. (./scripts/test
//! installs rsync.)

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use pulpdist_format::filter::{Filter, Rule};

fn make_tree(root: &Path) {
    let dirs = [
        "dists/stable/main/binary-amd64",
        "dists/stable/main/source",
        "dists/stable/contrib/binary-amd64",
        "dists/testing/main/binary-amd64",
        "pool/main/a/apt",
        "pool/main/b/bash",
        "pool/contrib/a/ant",
        "doc/html",
        "x",
        "foo/bar",
        "etc/conf.d",
        "main",
        "a",
        ".hidden",
        "deep/a/b/c/d",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).expect("dir");
    }
    let files = [
        "README",
        "a.iso",
        "x/y.iso",
        "x/README",
        "dists/stable/Release",
        "dists/stable/InRelease",
        "dists/stable/main/binary-amd64/Packages",
        "dists/stable/main/binary-amd64/Packages.xz",
        "dists/stable/main/source/Sources.gz",
        "dists/stable/contrib/binary-amd64/Packages",
        "dists/testing/main/binary-amd64/Packages",
        "pool/main/a/apt/apt_2.6.1_amd64.deb",
        "pool/main/a/apt/apt_2.6.1.dsc",
        "pool/main/b/bash/bash_5.2-1_amd64.deb",
        "pool/main/b/bash/bash_5.2.orig.tar.gz",
        "pool/contrib/a/ant/ant_1.10_all.deb",
        "doc/README",
        "doc/html/index.html",
        "foo/bar/foo",
        "main/foo",
        "a/b",
        "b[1].txt",
        "c.txt",
        "Upper.TXT",
        "7seven",
        "notes~",
        ".hidden/file",
        ".dotfile",
        "etc/conf.d/x.conf",
        "deep/a/b/c/d/e.iso",
        "deep/a/b/c/f.deb",
        "q",
    ];
    for f in files {
        fs::write(root.join(f), f.as_bytes()).expect("file");
    }
    std::os::unix::fs::symlink("pool", root.join("link-to-pool")).expect("symlink");
    std::os::unix::fs::symlink("../README", root.join("doc/link.readme")).expect("symlink");
}

fn ours(root: &Path, filter: &Filter) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = e.file_type().expect("type").is_dir();
            if !filter.includes(&path, is_dir) {
                continue;
            }
            out.insert(path.clone());
            if is_dir {
                stack.push(path);
            }
        }
    }
    out
}

fn theirs(root: &Path, rules: &[&str]) -> BTreeSet<String> {
    let dest = root.with_extension("dest");
    let mut cmd = Command::new("rsync");
    cmd.args(["-rl", "--dry-run", "--out-format=%n"]);
    for r in rules {
        cmd.arg(format!("--filter={r}"));
    }
    cmd.arg(format!("{}/", root.display())).arg(&dest);
    let out = cmd.output().expect("rsync is installed by ./scripts/test");
    assert!(
        out.status.success(),
        "rsync {rules:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "." && !l.starts_with("created directory"))
        .collect()
}

const RULE_SETS: &[&[&str]] = &[
    &[],
    &["- *.iso"],
    &["+ *.deb", "- *"],
    &["+ */", "+ *.deb", "- *"],
    &["- /pool/"],
    &["- pool/"],
    &["- /pool"],
    &["+ /dists/***", "- *"],
    &["+ /pool/", "+ /pool/main/***", "- *"],
    &["- **/binary-*/"],
    &["- main/binary-amd64/"],
    &["- **.iso"],
    &["- /**/README"],
    &["- [ab]*"],
    &["- [!ab]*"],
    &["- [^ab]*"],
    &["- ?"],
    &["- ???_*.deb"],
    &["- *[0-9].deb"],
    &["- pool/**/apt*"],
    &["+ doc/", "- */"],
    &["- doc/***"],
    &["- /doc/**"],
    &["- doc/**"],
    &["exclude *.dsc", "include *"],
    &["- foo"],
    &["- foo/"],
    &["- /x/y.iso"],
    &["- x/y.iso"],
    &["- y.iso"],
    &["+ **/main/**", "- *.deb"],
    &["- *~"],
    &["- .*"],
    &["- b\\[1\\].txt"],
    &["- b[[]1].txt"],
    &["- [[:upper:]]*"],
    &["- *[[:digit:]]*"],
    &[
        "+ /dists/",
        "+ /dists/stable/",
        "+ /dists/stable/main/***",
        "- *",
    ],
    &["- /*/main/"],
    &["- */main/"],
    &["- **/"],
    &["- *"],
    &["+ *", "- *.iso"],
    &["- ***"],
    &["+ pool/main/a/***", "- pool/main/*"],
    &["- a/"],
    &["- a"],
    &["- /pool/main/a/apt/"],
    &["- apt/*.deb"],
    &["- **/apt/*.deb"],
    &["- pool/*/a"],
    &["+ */", "- *"],
    &["- link*"],
    &["- *.d/"],
    &["- conf.d"],
    &["- [a-c]*.txt"],
    &["- deep/**/d"],
    &["- /deep/a/b/**/*.iso"],
    &["- **/c"],
    &["+ /deep/", "+ /deep/a/", "- /deep/*/", "- /deep/a/*"],
    &["- main/***"],
    &["- /main/***"],
    &["+ *.deb", "+ */", "- *", "- pool/contrib/"],
    &["- dists/*/main/source/"],
    &["- **/binary-amd64/Packages*"],
    &["- */*/"],
    &["- /*/*/"],
    &["- q*"],
    &["+ Release", "+ InRelease", "- dists/**", "+ *"],
    // A leading `**/` also matches at the top; `dir/***` matches only a directory `dir`.
    &["- **/README"],
    &["- **/a"],
    &["+ **/dists/***", "- *"],
    &["- foo/***"],
    &["- a/***"],
    &["+ */", "+ **/main/***", "- *"],
];

#[test]
fn filter_selects_what_rsync_selects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("tree");
    make_tree(&root);
    assert!(RULE_SETS.len() >= 50);
    let mut failures = Vec::new();
    let mut distinct = BTreeSet::new();
    for rules in RULE_SETS {
        let mut filter = Filter::new();
        for r in *rules {
            filter.push(Rule::parse(r).unwrap_or_else(|e| panic!("{e}")));
        }
        let (a, b) = (ours(&root, &filter), theirs(&root, rules));
        distinct.insert(b.iter().cloned().collect::<Vec<_>>().join(","));
        if a != b {
            failures.push(format!(
                "{rules:?}:\n  only ours:  {:?}\n  only rsync: {:?}",
                a.difference(&b).collect::<Vec<_>>(),
                b.difference(&a).collect::<Vec<_>>()
            ));
        }
    }
    // The rule sets really select different things (the comparison is not vacuous).
    assert!(
        distinct.len() > RULE_SETS.len() * 2 / 3,
        "{} distinct selections",
        distinct.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rule sets differ from rsync:\n{}",
        failures.len(),
        RULE_SETS.len(),
        failures.join("\n")
    );
}
