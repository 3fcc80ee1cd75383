//! Network namespace helpers against the real kernel (root only).
use std::os::unix::fs::MetadataExt;
use vxnet_dataplane::sys::netns::testutil::{TestNetns, ip, root_or_skip};
use vxnet_dataplane::sys::netns::{resolve, run_in};

fn netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn resolve_reports_missing_namespaces_clearly() {
    let err = resolve("vxt-does-not-exist").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        "network namespace 'vxt-does-not-exist' does not exist (looked for /run/netns/vxt-does-not-exist)"
    );
    let err = resolve("/proc/0/ns/net").unwrap_err();
    assert!(err.to_string().contains("/proc/0/ns/net"), "{err}");
    assert!(resolve("").is_err());
    // A path is taken as is.
    assert_eq!(
        resolve("/proc/self/ns/net").unwrap(),
        std::path::PathBuf::from("/proc/self/ns/net")
    );
}

#[test]
fn ip_returns_stderr_on_failure() {
    let err = ip(&["link", "show", "dev", "vxt-no-such-link"]).unwrap_err();
    assert!(err.contains("vxt-no-such-link"), "{err}");
}

#[test]
fn run_in_enters_the_namespace_and_guard_removes_it() {
    if !root_or_skip("run_in_enters_the_namespace_and_guard_removes_it") {
        return;
    }
    let outside = netns_inode();
    let ns = TestNetns::new().unwrap();
    let name = ns.name().to_string();
    let path = resolve(&name).unwrap();
    assert_eq!(path, ns.path());
    let expected = std::fs::metadata(&path).unwrap().ino();
    let inside = run_in(&path, netns_inode).unwrap();
    assert_eq!(inside, expected);
    assert_ne!(inside, outside);
    // The caller's thread did not move.
    assert_eq!(netns_inode(), outside);
    // Child processes spawned inside run there too: only `lo` exists.
    let links = ns
        .run(|| {
            let out = std::process::Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        })
        .unwrap();
    assert_eq!(links, 1);
    drop(ns);
    assert!(resolve(&name).is_err(), "namespace removed on drop");
}

#[test]
fn run_in_missing_path_errors_and_panics_propagate() {
    let err = run_in(std::path::Path::new("/run/netns/vxt-missing"), || ()).unwrap_err();
    assert!(err.to_string().contains("/run/netns/vxt-missing"), "{err}");
    let caught = std::panic::catch_unwind(|| {
        run_in(std::path::Path::new("/proc/self/ns/net"), || panic!("boom"))
    });
    assert!(caught.is_err());
}
