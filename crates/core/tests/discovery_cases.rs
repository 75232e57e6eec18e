//! Runs the language-neutral discovery cases (tests/discovery_cases.json at
//! the repo root) against `cuda_engine_core::discovery`, building each case's
//! files in a fresh temp dir. docs/discovery.md says how other languages run
//! the same file.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cuda_engine_core::discovery::{candidates, find_worker, DiscoveryEnv, WorkerSource};
use serde_json::Value;

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/discovery_cases.json");

fn subst(s: &str, root: &Path) -> String {
    s.replace("{root}", &root.to_string_lossy())
}

fn norm(s: &str) -> String {
    s.replace('\\', "/")
}

fn run_case(case: &Value) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for f in case["files"].as_array().unwrap() {
        let p = root.join(f["path"].as_str().unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        let mode = u32::from_str_radix(f["mode"].as_str().unwrap(), 8).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let base = root.join(case["base_dir"].as_str().unwrap());
    std::fs::create_dir_all(&base).unwrap();
    let windows = case["windows"].as_bool().unwrap_or(false);
    let sep = if windows { ";" } else { ":" };
    let path: Vec<String> =
        case["env"]["PATH"].as_array().unwrap().iter().map(|e| subst(e.as_str().unwrap(), root)).collect();
    let env = DiscoveryEnv {
        cuda_worker_path: case["env"]["CUDA_WORKER_PATH"].as_str().map(|s| OsString::from(subst(s, root))),
        path: Some(OsString::from(path.join(sep))),
        windows,
        // The bundled directory (the npm platform package's worker); absent or null: none.
        bundled_dir: case["bundled_dir"].as_str().map(|s| PathBuf::from(subst(s, root))),
    };

    if let Some(want) = case.get("candidates") {
        let got: Vec<String> = candidates(&base, &env).iter().map(|p| norm(&p.to_string_lossy())).collect();
        let want: Vec<String> = want.as_array().unwrap().iter().map(|s| subst(s.as_str().unwrap(), root)).collect();
        if got != want {
            return Err(format!("candidates:\n got  {got:?}\n want {want:?}"));
        }
    }
    let expect = &case["expect"];
    match (find_worker(&base, &env), expect.get("error")) {
        (Ok((path, source)), None) => {
            let want_path = subst(expect["path"].as_str().unwrap(), root);
            let want_source: WorkerSource = serde_json::from_value(expect["source"].clone()).unwrap();
            if norm(&path.to_string_lossy()) != want_path || source != want_source {
                return Err(format!("got {path:?} {source:?}, want {want_path} {want_source:?}"));
            }
        }
        (Ok(found), Some(_)) => return Err(format!("expected an error, found {found:?}")),
        (Err(e), None) => return Err(format!("expected a worker, got {e}")),
        (Err(e), Some(code)) => {
            if e.code.as_str() != code.as_str().unwrap() {
                return Err(format!("wrong code: {e}"));
            }
            for part in expect["message_contains"].as_array().unwrap() {
                let part = subst(part.as_str().unwrap(), root);
                if !e.message.contains(&part) {
                    return Err(format!("message {:?} lacks {part:?}", e.message));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn shared_discovery_cases() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(CASES).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "the case file lost cases");
    let mut failures = Vec::new();
    for case in cases {
        if let Err(why) = run_case(case) {
            failures.push(format!("{}: {why}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn from_process_reads_the_real_environment() {
    // Only reads: never set variables here, other tests run in parallel.
    let env = DiscoveryEnv::from_process();
    assert_eq!(env.path, std::env::var_os("PATH"));
    assert_eq!(env.windows, cfg!(windows));
}
