//! Runs the built `vxnet` binary against an in-process API server with a
//! fake handler on a temporary socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use vxnet_api::dp::{
    CounterValue, DropCount, EndpointInfo, EndpointKind, Owner, PeerAdd, Request, StatsReport,
};
use vxnet_api::server::{ServerHandle, serve};
use vxnet_api::{ErrorCode, MacAddr, Response};

/// A fresh directory removed on drop, also when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vxnet-clit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server whose handler records every request and answers with `answer`.
struct Fake {
    _dir: TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    _server: ServerHandle,
}

impl Fake {
    fn new(answer: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Fake {
        let dir = TempDir::new("fake");
        let socket = dir.0.join("dp.sock");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let server = serve(
            &socket,
            Arc::new(move |req: Request| {
                let resp = answer(&req);
                seen2.lock().unwrap().push(req);
                resp
            }),
        )
        .unwrap();
        Fake {
            _dir: dir,
            socket,
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn vxnet(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vxnet"))
        .arg("dp")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("VXNET_SOCKET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report() -> StatsReport {
    StatsReport {
        workers: 2,
        counters: vec![
            CounterValue {
                name: "tap_rx_frames".into(),
                value: 42,
                help: "frames read from TAPs".into(),
            },
            CounterValue {
                name: "tap_rx_bytes".into(),
                value: 0,
                help: String::new(),
            },
        ],
        drops: vec![
            DropCount {
                stage: "tap".into(),
                reason: "runt".into(),
                count: 0,
                help: String::new(),
            },
            DropCount {
                stage: "wire".into(),
                reason: "unknown_vni".into(),
                count: 7,
                help: String::new(),
            },
        ],
    }
}

#[test]
fn stats_json_is_the_report_as_sent() {
    let fake = Fake::new(|_| Response::ok(report()));
    let out = vxnet(&fake.socket, &["stats", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: StatsReport = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(got, report());
    assert_eq!(fake.seen(), vec![Request::Stats(vxnet_api::dp::Stats {})]);
}

#[test]
fn stats_table_shows_non_zero_rows() {
    let fake = Fake::new(|_| Response::ok(report()));
    let out = vxnet(&fake.socket, &["stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("tap_rx_frames   42"), "{text}");
    assert!(text.contains("wire    unknown_vni   7"), "{text}");
    assert!(!text.contains("tap_rx_bytes"), "{text}");
}

#[test]
fn peer_add_sends_the_request() {
    let fake = Fake::new(|_| Response::ok(()));
    let out = vxnet(
        &fake.socket,
        &[
            "peer",
            "add",
            "--vni",
            "4096",
            "--mac",
            "02:42:0a:00:00:03",
            "--ip",
            "10.0.0.3",
            "--vtep",
            "192.0.2.2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fake.seen(),
        vec![Request::PeerAdd(PeerAdd {
            vni: 4096u32.try_into().unwrap(),
            mac: "02:42:0a:00:00:03".parse().unwrap(),
            ips: vec!["10.0.0.3".parse().unwrap()],
            vtep: "192.0.2.2".parse().unwrap(),
            owner: Owner::User,
        })]
    );
}

#[test]
fn refusal_is_printed_with_the_exit_code_of_its_code() {
    for (code, status) in [
        (ErrorCode::NotFound, 3),
        (ErrorCode::AlreadyExists, 4),
        (ErrorCode::InvalidArgument, 2),
        (ErrorCode::Internal, 1),
    ] {
        let fake = Fake::new(move |_| Response::error(code, "VNI 4096 has no local endpoint"));
        let out = vxnet(
            &fake.socket,
            &["flood", "add", "--vni", "4096", "--vtep", "192.0.2.2"],
        );
        assert_eq!(out.status.code(), Some(status), "{code:?}");
        assert_eq!(stderr(&out), "error: VNI 4096 has no local endpoint\n");
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn usage_error_exits_2_and_sends_nothing() {
    let fake = Fake::new(|_| Response::ok(()));
    let out = vxnet(
        &fake.socket,
        &["peer", "del", "--vni", "0", "--mac", "02:00:00:00:00:01"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("VNI 0 is outside"),
        "{}",
        stderr(&out)
    );
    let out = vxnet(
        &fake.socket,
        &[
            "attach",
            "--netns",
            "n",
            "--vni",
            "5",
            "--ip",
            "10.0.0.2/24",
            "--gateway",
            "fd00::1",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("same address family"),
        "{}",
        stderr(&out)
    );
    assert!(fake.seen().is_empty());
}

#[test]
fn unreachable_socket_gives_the_helpful_message() {
    let dir = TempDir::new("nosock");
    let socket = dir.0.join("dataplane.sock");
    let out = vxnet(&socket, &["show"]);
    assert_eq!(out.status.code(), Some(6), "unavailable");
    assert_eq!(
        stderr(&out),
        format!(
            "error: cannot reach the dataplane at {}: is vxnet-dataplane running? (No such file or directory)\n",
            socket.display()
        )
    );
}

#[test]
fn attach_prints_the_endpoint_and_socket_comes_from_env() {
    let fake = Fake::new(|req| match req {
        Request::Attach(a) => Response::ok(EndpointInfo {
            id: 1,
            vni: a.vni,
            mac: a.mac.unwrap_or(MacAddr::from_ip(a.ips[0].addr())),
            ips: a.ips.clone(),
            mtu: a.mtu.unwrap_or(1450),
            ifname: "eth0".into(),
            location: "web1".into(),
            kind: EndpointKind::Native,
            tap: "vx1".into(),
            gateways: vec![],
            path_mtu: 1450,
            owner: Owner::User,
        }),
        _ => Response::error(ErrorCode::Internal, "unexpected"),
    });
    let out = Command::new(env!("CARGO_BIN_EXE_vxnet"))
        .args([
            "dp",
            "attach",
            "--netns",
            "web1",
            "--vni",
            "4096",
            "--ip",
            "10.0.0.2/24",
        ])
        .env("VXNET_SOCKET", &fake.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("ID   VNI    MAC"), "{text}");
    assert!(
        lines[1].contains("02:42:0a:00:00:02   10.0.0.2/24   1450   native   web1"),
        "{text}"
    );
}

/// `vxnet capture ARGS FILE` against `fake` (ARGS end with `-w`).
fn capture(fake: &Fake, args: &[&str], file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vxnet"))
        .arg("capture")
        .arg("--socket")
        .arg(&fake.socket)
        .args(args)
        .arg(file)
        .env_remove("VXNET_SOCKET")
        .output()
        .unwrap()
}

/// A refused capture changes nothing: the `-w` file keeps its contents
/// (it is emptied only after the dataplane's `start`).
#[test]
fn refused_capture_leaves_the_file_untouched() {
    let fake = Fake::new(|_| {
        Response::error(
            ErrorCode::NotFound,
            "no local endpoint has address 10.0.1.9; see `vxnet dp endpoints`",
        )
    });
    let keep = fake._dir.0.join("keep.txt");
    std::fs::write(&keep, "precious\n").unwrap();
    let out = capture(&fake, &["--endpoint", "10.0.1.9", "-c", "5", "-w"], &keep);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no local endpoint"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "precious\n");
    assert!(matches!(fake.seen().as_slice(), [Request::Capture(_)]));
    // A file that did not exist is not left behind, empty.
    let new = fake._dir.0.join("new.pcapng");
    let out = capture(&fake, &["--endpoint", "10.0.1.9", "-w"], &new);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!new.exists());
}

/// A file in a directory that does not exist is refused before the
/// dataplane is asked (before, the capture started and "capturing" was
/// printed first).
#[test]
fn capture_to_a_missing_directory_asks_nothing() {
    let fake = Fake::new(|_| panic!("the dataplane must not be asked"));
    let file = fake._dir.0.join("missing/out.pcapng");
    let out = capture(&fake, &["--vni", "4096", "-w"], &file);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("missing") && !err.contains("capturing"),
        "{err}"
    );
    assert!(fake.seen().is_empty());
}

/// SIGINT ends `vxnet capture` saying it was interrupted (not "stopped by
/// duration"), exit 130, with the file a whole pcapng.
#[test]
fn interrupted_capture_says_so_and_leaves_a_whole_file() {
    use vxnet_api::observe::CaptureMsg;
    use vxnet_api::server::{Reply, serve_streaming};
    let dir = TempDir::new("sigint");
    let socket = dir.0.join("dp.sock");
    let _server = serve_streaming(
        &socket,
        Arc::new(|_req: Request| {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut started = false;
            Reply::Stream(Box::new(std::iter::from_fn(move || {
                if !started {
                    started = true;
                    let local_vtep = "192.0.2.1".parse().unwrap();
                    return Some(Some(Response::ok(CaptureMsg::Start { local_vtep })));
                }
                std::thread::sleep(vxnet_api::server::STREAM_IDLE_CHECK);
                (std::time::Instant::now() < end).then_some(None)
            })))
        }),
    )
    .unwrap();
    let file = dir.0.join("out.pcapng");
    let child = Command::new(env!("CARGO_BIN_EXE_vxnet"))
        .arg("capture")
        .arg("--socket")
        .arg(&socket)
        .args(["--vni", "4096", "-w"])
        .arg(&file)
        .env_remove("VXNET_SOCKET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The file has its header once the capture started (the handler is
    // set before the file is opened).
    while std::fs::metadata(&file).map_or(true, |m| m.len() == 0) {
        assert!(std::time::Instant::now() < give_up, "capture never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!err.contains("stopped by duration"), "{err}");
    let bytes = std::fs::read(&file).unwrap();
    let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
    let mut blocks = 0;
    while let Some(b) = r.next_block() {
        b.unwrap();
        blocks += 1;
    }
    assert_eq!(blocks, 2, "one interface description per view");
}
