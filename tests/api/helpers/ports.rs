//! Ports on 127.0.0.1: one that nothing listens on yet, and binding one that was
//! closed a moment ago.

use std::net::SocketAddr;
use std::time::Duration;

/// A port that nothing listens on (yet).
pub async fn free_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

/// Binds `addr`, which may have been closed a moment ago, or be held for a while
/// by another test's client connection (an ephemeral port): up to `tries` more
/// times, 100 ms apart, each failure said on stderr; then it fails the test.
pub async fn bind_patiently(addr: SocketAddr, what: &str, tries: u32) -> tokio::net::TcpListener {
    let mut tried = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) if tried < tries => {
                tried += 1;
                eprintln!("rebinding {what}: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("cannot bind {what}: {err}"),
        }
    }
}
