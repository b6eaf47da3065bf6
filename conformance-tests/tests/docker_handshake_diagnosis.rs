//! When the Docker API handshake breaks (a testcontainers release whose
//! bollard sends `/v1.5x/` paths, against Docker 20.10), the fixtures say so
//! and name the fix, instead of a bare HTTP 400. A fake daemon on loopback
//! answers every request the way Docker 20.10 answers a too-new client.
//! Its own test binary: it points DOCKER_HOST at the fake for the process.
#![cfg(feature = "containers")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;

use sharedstate_conformance::fixtures::{self, ServiceKind};

/// What Docker 20.10 (API 1.41) says to a client asking for API 1.53.
const TOO_NEW: &str =
    r#"{"message":"client version 1.53 is too new. Maximum supported API version is 1.41"}"#;

/// A loopback HTTP server answering every request with 400 and [`TOO_NEW`].
fn fake_old_daemon() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                // Read the request head (and a body, if any) before answering.
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{TOO_NEW}",
                    TOO_NEW.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    format!("tcp://{address}")
}

#[test]
fn a_too_new_client_is_named_with_the_fix() {
    // Before any fixture creates testcontainers' client (it reads DOCKER_HOST).
    std::env::set_var("DOCKER_HOST", fake_old_daemon());
    std::env::remove_var(fixtures::ZOOKEEPER_ENDPOINT_VAR);

    let error = fixtures::docker_handshake().expect_err("the fake daemon rejects every call");
    eprintln!("{error}");
    for needle in ["handshake broke", "too new", "=0.28.0", "bollard"] {
        assert!(error.contains(needle), "{needle:?} missing from: {error}");
    }

    // A fixture that needs a container fails with the same explanation.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let error = runtime
        .block_on(fixtures::start_server(ServiceKind::ZooKeeper))
        .expect_err("no container can start");
    assert!(error.contains("handshake broke"), "{error}");
    assert!(
        error.contains("scripts/test.sh"),
        "the usual help too: {error}"
    );
}
