//! The compiler's messages for the mistakes users make most (`tests/ui/*.rs`)
//! and closures that must compile without type annotations
//! (`tests/ui/pass/*.rs`).
//!
//! Each case is compiled by `rustc` against the crates this test binary was
//! built with (`target/<profile>/deps`), checking types only
//! (`--emit=metadata`): nothing is rebuilt, unlike a separate Cargo project
//! (trybuild rebuilt every dependency with its own flags, three and a half
//! minutes per CI run). A failing case must fail, and its output must hold
//! every line of the case's `//~ ` comments: the parts of the message this
//! crate writes (`diagnostic::on_unimplemented` notes and labels), not the
//! compiler's own layout, which changes between Rust versions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The crates the cases may use, found beside this test binary.
const EXTERNS: &[&str] = &["tower_redis_ratelimit", "axum", "tonic"];

/// `target/<profile>/deps`, from this test binary's path.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// The rlibs of `name` beside this binary, newest first, built no later
/// than the binary itself.
fn rlibs(deps: &Path, name: &str) -> Vec<PathBuf> {
    let exe_time = std::fs::metadata(std::env::current_exe().unwrap())
        .and_then(|m| m.modified())
        .unwrap();
    let prefix = format!("lib{name}-");
    let mut found: Vec<(SystemTime, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(deps).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".rlib") {
            let time = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
            if time <= exe_time {
                found.push((time, path));
            }
        }
    }
    found.sort_by_key(|(time, _)| std::cmp::Reverse(*time));
    assert!(
        !found.is_empty(),
        "no lib{name}-*.rlib in {}",
        deps.display()
    );
    found.into_iter().map(|(_, p)| p).collect()
}

/// Type-checks `case` against the rlibs `externs` (in [`EXTERNS`] order);
/// returns whether it compiled, and the compiler's output.
fn compile_with(case: &Path, externs: &[PathBuf]) -> (bool, String) {
    let deps = deps_dir();
    let out = std::env::temp_dir().join(format!("trr-ui-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition",
        "2024",
        "--crate-type",
        "bin",
        "--emit=metadata",
    ])
    .arg("--out-dir")
    .arg(&out)
    .arg("-L")
    .arg(format!("dependency={}", deps.display()))
    .arg("--color=never")
    .arg(case);
    for (name, path) in EXTERNS.iter().zip(externs) {
        cmd.arg("--extern")
            .arg(format!("{name}={}", path.display()));
    }
    let output = cmd.output().expect("run rustc");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The rlibs this binary was built with, one per [`EXTERNS`] entry. A
/// target directory that also holds builds with other features has several
/// candidates per crate (a fresh CI build has one): the newest combination
/// with which every `tests/ui/pass` case compiles is the one.
fn externs() -> &'static [PathBuf] {
    static CHOSEN: OnceLock<Vec<PathBuf>> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let deps = deps_dir();
        let candidates: Vec<Vec<PathBuf>> = EXTERNS.iter().map(|n| rlibs(&deps, n)).collect();
        let mut combination = vec![0; EXTERNS.len()];
        let mut last = String::new();
        for _ in 0..64 {
            let externs: Vec<PathBuf> = combination
                .iter()
                .zip(&candidates)
                .map(|(&i, c)| c[i].clone())
                .collect();
            let failure = cases("tests/ui/pass")
                .iter()
                .map(|case| compile_with(case, &externs))
                .find(|(ok, _)| !ok);
            match failure {
                None => return externs,
                Some((_, stderr)) => last = stderr,
            }
            // The next combination, the first crate's candidates fastest.
            let mut i = 0;
            loop {
                assert!(
                    i < combination.len(),
                    "no build of {EXTERNS:?} compiles tests/ui/pass:\n{last}"
                );
                combination[i] += 1;
                if combination[i] < candidates[i].len() {
                    break;
                }
                combination[i] = 0;
                i += 1;
            }
        }
        panic!("no build of {EXTERNS:?} compiles tests/ui/pass:\n{last}")
    })
}

/// Type-checks `case`; returns whether it compiled, and the compiler's output.
fn compile(case: &Path) -> (bool, String) {
    compile_with(case, externs())
}

/// The `.rs` files of `dir`, sorted.
fn cases(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    out.sort();
    out
}

#[test]
fn mistakes_get_this_crates_diagnostics() {
    let cases = cases("tests/ui");
    assert!(cases.len() >= 3, "{cases:?}");
    for case in cases {
        let source = std::fs::read_to_string(&case).unwrap();
        let expected: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//~ "))
            .collect();
        assert!(!expected.is_empty(), "{}: no `//~ ` line", case.display());
        let (ok, stderr) = compile(&case);
        assert!(!ok, "{} compiled", case.display());
        for line in expected {
            assert!(
                stderr.contains(line),
                "{}: the compiler's output lacks {line:?}:\n{stderr}",
                case.display()
            );
        }
    }
}

#[test]
fn closures_need_no_annotations() {
    let cases = cases("tests/ui/pass");
    assert!(!cases.is_empty());
    for case in cases {
        let (ok, stderr) = compile(&case);
        assert!(ok, "{} does not compile:\n{stderr}", case.display());
        assert!(!stderr.contains("error"), "{stderr}");
    }
}
