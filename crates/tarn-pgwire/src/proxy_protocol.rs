//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on the Postgres wire endpoint.
//!
//! Behind a TCP load balancer every connection comes from the balancer's address, so the
//! checks that depend on where a client is — a password or token only over TLS unless the
//! client is on loopback ([`tarn_auth::secret_may_cross`]), `auth.trust_loopback` — and the
//! logs would see the balancer. A balancer configured to send a PROXY header (HAProxy
//! `send-proxy`/`send-proxy-v2`, AWS NLB and Google Cloud proxy protocol, Kubernetes ingress
//! controllers) names the client in it before the first byte of the Postgres protocol.
//!
//! Only connections from `server.proxy_protocol_from` are read for a header, and they must
//! send one: anyone else could claim any address. The header is parsed by the `ppp` crate; this
//! module reads exactly its bytes off the socket (v1 up to its CRLF, v2 its fixed part and the
//! length it states) so the Postgres protocol starts right after it. A `LOCAL` (v2) or
//! `UNKNOWN` (v1) header — a balancer's own health check — keeps the balancer's address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest v1 header the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The most a v2 header may announce beyond its 16 fixed bytes that tarn reads (addresses and
/// TLVs; the specification allows up to 65535, balancers send far less).
const V2_MAX_PAYLOAD: usize = 4096;

/// Reads the PROXY header a connection from a trusted balancer begins with; returns the
/// client's address (the balancer's, `peer`, for a health check's header). An error names what
/// was wrong; the connection is then closed without a Postgres message (the client behind the
/// balancer would not understand one before its startup).
pub(crate) async fn read_header(socket: &mut TcpStream, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    match tokio::time::timeout(HEADER_TIMEOUT, read(socket, peer)).await {
        Ok(read) => read,
        Err(_) => Err(invalid(format!(
            "no PROXY protocol header within {HEADER_TIMEOUT:?} from {peer} (server.proxy_protocol_from expects one)"
        ))),
    }
}

async fn read(socket: &mut TcpStream, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    let mut header = vec![0u8; 6];
    socket.read_exact(&mut header).await?;
    if header.as_slice() == b"PROXY " {
        // v1: text up to CRLF.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(invalid(format!(
                    "the PROXY protocol v1 header from {peer} has no CRLF within {V1_MAX} bytes"
                )));
            }
            header.push(socket.read_u8().await?);
        }
        let text = std::str::from_utf8(&header)
            .map_err(|_| invalid(format!("the PROXY header from {peer} is not text")))?;
        let parsed = v1::Header::try_from(text)
            .map_err(|e| invalid(format!("bad PROXY protocol v1 header from {peer}: {e}")))?;
        return Ok(match parsed.addresses {
            v1::Addresses::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
            v1::Addresses::Tcp6(a) => SocketAddr::from((a.source_address, a.source_port)),
            v1::Addresses::Unknown => peer,
        });
    }
    if !V2_SIGNATURE.starts_with(&header) {
        return Err(invalid(format!(
            "expected a PROXY protocol header from {peer} (server.proxy_protocol_from), got {:?}",
            String::from_utf8_lossy(&header)
        )));
    }
    header.resize(16, 0);
    socket.read_exact(&mut header[6..]).await?;
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if length > V2_MAX_PAYLOAD {
        return Err(invalid(format!(
            "the PROXY protocol v2 header from {peer} announces {length} bytes (at most {V2_MAX_PAYLOAD})"
        )));
    }
    header.resize(16 + length, 0);
    socket.read_exact(&mut header[16..]).await?;
    let parsed = v2::Header::try_from(header.as_slice())
        .map_err(|e| invalid(format!("bad PROXY protocol v2 header from {peer}: {e}")))?;
    if parsed.command == v2::Command::Local {
        return Ok(peer);
    }
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => peer,
    })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// The clients behind balancers' connections: the client a PROXY header named, by the
/// connection's own peer address (unique while the connection is open).
#[derive(Debug, Default)]
pub(crate) struct Clients {
    by_peer: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl Clients {
    /// Records that the connection from `peer` is `client`'s, until [`Clients::closed`].
    pub(crate) fn opened(&self, peer: SocketAddr, client: SocketAddr) {
        self.by_peer
            .lock()
            .expect("clients poisoned")
            .insert(peer, client);
    }

    /// Forgets the connection from `peer`.
    pub(crate) fn closed(&self, peer: SocketAddr) {
        self.by_peer.lock().expect("clients poisoned").remove(&peer);
    }

    /// The client of the connection from `peer`: the one its PROXY header named, else `peer`.
    pub(crate) fn client_of(&self, peer: SocketAddr) -> SocketAddr {
        self.by_peer
            .lock()
            .expect("clients poisoned")
            .get(&peer)
            .copied()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Sends `bytes` then `after` over a loopback connection; returns what `read_header` made
    /// of it and the bytes left for the Postgres protocol.
    async fn through(bytes: &[u8], after: &[u8]) -> (std::io::Result<SocketAddr>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (bytes, after) = (bytes.to_vec(), after.to_vec());
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            s.write_all(&after).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let (mut socket, peer) = listener.accept().await.unwrap();
        let read = read_header(&mut socket, peer).await;
        let mut rest = Vec::new();
        if read.is_ok() {
            socket.read_to_end(&mut rest).await.unwrap();
        }
        client.await.unwrap();
        (read, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_leave_the_protocol_intact() {
        let startup = b"\0\0\0\x08\x04\xd2\x16\x2f";
        let (client, rest) = through(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 5433\r\n", startup).await;
        assert_eq!(client.unwrap(), "203.0.113.7:51234".parse().unwrap());
        assert_eq!(rest, startup);
        let (client, _) = through(b"PROXY TCP6 2001:db8::1 ::1 40000 5433\r\n", b"").await;
        assert_eq!(client.unwrap(), "[2001:db8::1]:40000".parse().unwrap());

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes of addresses
        v2.extend([198, 51, 100, 9, 127, 0, 0, 1]);
        v2.extend(40001u16.to_be_bytes());
        v2.extend(5433u16.to_be_bytes());
        let (client, rest) = through(&v2, startup).await;
        assert_eq!(client.unwrap(), "198.51.100.9:40001".parse().unwrap());
        assert_eq!(rest, startup);
    }

    #[tokio::test]
    async fn health_checks_keep_the_balancers_address() {
        let (client, _) = through(b"PROXY UNKNOWN\r\n", b"").await;
        assert!(client.unwrap().ip().is_loopback());
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]); // v2 LOCAL
        let (client, _) = through(&local, b"").await;
        assert!(client.unwrap().ip().is_loopback());
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_refused_naming_it() {
        let (client, _) = through(b"\0\0\0\x08\x04\xd2\x16\x2f", b"").await;
        let e = client.unwrap_err().to_string();
        assert!(e.contains("expected a PROXY protocol header"), "{e}");
        let (client, _) = through(b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n", b"").await;
        let e = client.unwrap_err().to_string();
        assert!(e.contains("bad PROXY protocol v1 header"), "{e}");
        let (client, _) = through(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20), b"").await;
        let e = client.unwrap_err().to_string();
        assert!(e.contains("no CRLF"), "{e}");
    }
}
