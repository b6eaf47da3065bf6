//! The fault-injecting TCP proxy, against a local echo server (no Docker).
#![cfg(feature = "containers")]

use std::time::Duration;

use sharedstate_conformance::fixtures::{ProxyMode, TcpProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// An echo server on a free loopback port; it stops with the runtime.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(proxy: &TcpProxy) -> TcpStream {
    timeout(WAIT, TcpStream::connect(proxy.endpoint()))
        .await
        .expect("connect to the proxy timed out")
        .expect("connect to the proxy")
}

async fn round_trip(conn: &mut TcpStream, msg: &[u8]) {
    conn.write_all(msg).await.expect("write through the proxy");
    let mut got = vec![0u8; msg.len()];
    timeout(WAIT, conn.read_exact(&mut got))
        .await
        .expect("no echo through the proxy within 5 s")
        .expect("read the echo");
    assert_eq!(got, msg);
}

/// Whether the connection is closed (EOF or error) within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn proxy_forwards_bytes_both_ways() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    assert!(proxy.endpoint().starts_with("127.0.0.1:"));
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    round_trip(&mut a, b"hello").await;
    round_trip(&mut b, &vec![7u8; 100_000]).await;
    round_trip(&mut a, b"again").await;
    assert_eq!(proxy.live_connections(), 2);
    assert_eq!(proxy.accepted_connections(), 2);
}

#[tokio::test]
async fn proxy_suspend_cuts_and_refuses_then_resume_restores() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    let mut live = connect(&proxy).await;
    round_trip(&mut live, b"before").await;

    proxy.suspend();
    assert_eq!(proxy.mode(), ProxyMode::Refuse);
    assert!(
        closed_within(&mut live, WAIT).await,
        "suspend must close the live connection"
    );
    let mut refused = connect(&proxy).await;
    assert!(
        closed_within(&mut refused, WAIT).await,
        "a connection made while suspended must be closed at once"
    );

    proxy.resume();
    let mut again = connect(&proxy).await;
    round_trip(&mut again, b"after").await;
}

#[tokio::test]
async fn proxy_stall_holds_bytes_until_resume() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    let mut live = connect(&proxy).await;
    round_trip(&mut live, b"before").await;

    proxy.stall();
    live.write_all(b"held").await.expect("write while stalled");
    let mut buf = [0u8; 4];
    assert!(
        timeout(Duration::from_millis(500), live.read_exact(&mut buf))
            .await
            .is_err(),
        "no byte may pass while stalled"
    );
    // New connections are accepted but go nowhere either.
    let mut fresh = connect(&proxy).await;
    fresh.write_all(b"new!").await.expect("write while stalled");

    proxy.resume();
    timeout(WAIT, live.read_exact(&mut buf))
        .await
        .expect("held bytes must flow after resume")
        .expect("read after resume");
    assert_eq!(&buf, b"held");
    timeout(WAIT, fresh.read_exact(&mut buf))
        .await
        .expect("a connection made while stalled must flow after resume")
        .expect("read after resume");
    assert_eq!(&buf, b"new!");
}

#[tokio::test]
async fn proxy_stops_when_dropped() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    let endpoint = proxy.endpoint();
    let mut live = connect(&proxy).await;
    round_trip(&mut live, b"ping").await;
    drop(proxy);
    assert!(
        closed_within(&mut live, WAIT).await,
        "dropping the proxy must close its connections"
    );
    // The listener goes away too: connections are refused (bounded wait).
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(&endpoint).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the proxy's port must close after drop");
}

#[tokio::test]
async fn proxy_to_a_dead_upstream_closes_the_client() {
    // A port nobody listens on: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let proxy = TcpProxy::start(dead).await.expect("proxy");
    let mut conn = connect(&proxy).await;
    assert!(closed_within(&mut conn, Duration::from_secs(10)).await);
}
