//! `twinmq pub` and `twinmq sub` as a user runs them: the real binary against the real
//! broker, over QUIC with the broker's CA, and their one-line errors.

mod client_util;
mod common;

use std::process::Stdio;

use client_util::within;
use common::TestBroker;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_twinmq");

fn twinmq(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts `twinmq sub ... -d` and returns once it reports its subscriptions.
async fn start_sub(args: &[&str], filters: usize) -> Child {
    let mut child = twinmq(args).spawn().expect("twinmq sub starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut subscribed = 0;
    while subscribed < filters {
        let line = within("sub to subscribe", lines.next_line())
            .await
            .expect("stderr readable")
            .unwrap_or_else(|| panic!("twinmq sub ended before subscribing"));
        assert!(!line.contains("error"), "{line}");
        if line.contains("subscribed to") {
            subscribed += 1;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn finish(child: Child) -> std::process::Output {
    within("the command to exit", child.wait_with_output())
        .await
        .expect("wait")
}

#[tokio::test]
async fn sub_and_pub_over_quic_with_the_broker_ca() {
    let broker = TestBroker::start("cli-quic").await;
    let port = broker.quic.port().to_string();
    let ca = broker.ca.to_str().expect("utf8 path");
    let common = ["--transport", "quic", "-p", &port, "--cafile", ca];
    let mut sub_args = vec!["sub", "-t", "cli/#", "-C", "1", "-q", "1", "-d", "-W", "10"];
    sub_args.extend(common);
    let sub = start_sub(&sub_args, 1).await;

    let mut pub_args = vec!["pub", "-t", "cli/x", "-m", "hello over quic", "-q", "1"];
    pub_args.extend(common);
    let publish = within("pub", twinmq(&pub_args).output())
        .await
        .expect("pub runs");
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert!(publish.stderr.is_empty());

    let out = finish(sub).await;
    assert!(out.status.success(), "sub exit {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over quic\n");
}

#[tokio::test]
async fn pub_lines_from_stdin_over_multi_stream_quic_and_sub_verbose_over_tls() {
    let broker = TestBroker::start("cli-lines").await;
    let ca = broker.ca.to_str().expect("utf8 path");
    let tls_port = broker.tls.port().to_string();
    let quic_port = broker.quic.port().to_string();
    let sub = start_sub(
        &[
            "sub", "-t", "lines/#", "-t", "other", "-C", "3", "-v", "-q", "2", "-d", "-W", "10",
            "--cafile", ca, "-p", &tls_port,
        ],
        2,
    )
    .await;
    let mut publish = twinmq(&[
        "pub",
        "-t",
        "lines/in",
        "-l",
        "-q",
        "2",
        "--transport",
        "quic",
        "--streams",
        "multi",
        "--cafile",
        ca,
        "-p",
        &quic_port,
    ])
    .stdin(Stdio::piped())
    .spawn()
    .expect("pub starts");
    let mut stdin = publish.stdin.take().expect("stdin piped");
    stdin
        .write_all(b"first\n\nsecond\nthird\n")
        .await
        .expect("write stdin");
    drop(stdin);
    let published = finish(publish).await;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let out = finish(sub).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "lines/in first\nlines/in second\nlines/in third\n"
    );
}

#[tokio::test]
async fn errors_are_one_line_and_exit_non_zero() {
    let broker = TestBroker::start("cli-errors").await;
    // Nothing listens on a port we just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = free.local_addr().expect("addr").port().to_string();
    drop(free);
    let tls_port = broker.tls.port().to_string();
    let quic_port = broker.quic.port().to_string();
    let ca = broker.ca.to_str().expect("utf8 path");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "pub",
                "-h",
                "127.0.0.1",
                "-p",
                &closed_port,
                "-t",
                "a",
                "-m",
                "x",
            ],
            "connection refused",
        ),
        (
            // The system CA bundle does not know the test CA.
            vec![
                "pub",
                "--transport",
                "tls",
                "-p",
                &tls_port,
                "-t",
                "a",
                "-m",
                "x",
                "--cafile",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            vec!["sub", "-p", &tls_port, "--cafile", ca, "-t", "a", "-c"],
            "needs a client id",
        ),
        (
            vec![
                "pub",
                "--transport",
                "quic",
                "-p",
                &quic_port,
                "-t",
                "a/+",
                "-m",
                "x",
                "--cafile",
                ca,
            ],
            "invalid topic",
        ),
    ];
    for (args, expected) in cases {
        let out = within("the command", twinmq(&args).output())
            .await
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("twinmq: "), "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_unknown_ca_is_named_as_such() {
    let broker = TestBroker::start("cli-unknown-ca").await;
    let other = common::temp_dir("cli-other-ca");
    let set = twinmq::config::certs::generate_cert_set(&other, &[], &[]).expect("certs");
    let other_ca = set.ca_cert.to_str().expect("utf8 path");
    for (transport, port) in [("tls", broker.tls.port()), ("quic", broker.quic.port())] {
        let port = port.to_string();
        let out = within(
            "pub",
            twinmq(&[
                "pub",
                "--transport",
                transport,
                "-p",
                &port,
                "--cafile",
                other_ca,
                "-t",
                "a",
                "-m",
                "x",
            ])
            .output(),
        )
        .await
        .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("unknown CA"), "{transport}: {stderr}");
    }
}

#[tokio::test]
async fn sub_gives_up_after_w_seconds_without_its_count() {
    let broker = TestBroker::start("cli-timeout").await;
    let port = broker.tcp.port().to_string();
    let out = within(
        "sub -W 1",
        twinmq(&["sub", "-p", &port, "-t", "quiet", "-C", "1", "-W", "1"]).output(),
    )
    .await
    .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 1s"), "{stderr}");
}
