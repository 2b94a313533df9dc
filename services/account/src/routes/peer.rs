//! Whether the client of a request is still connected. actix-web keeps
//! running a handler after its client has gone, so a sign-up flood that
//! clients abandon would still be hashed, stored and mailed. Each accepted
//! connection keeps a duplicate of its socket; before a password job starts,
//! a non-blocking `MSG_PEEK` on it tells an open connection (data or
//! nothing yet) from one the peer has closed or reset.

use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

use crate::password::StillThere;

/// A duplicate of a connection's socket.
#[cfg(target_os = "linux")]
pub struct Peer(std::os::fd::OwnedFd);

#[cfg(not(target_os = "linux"))]
pub struct Peer;

/// `HttpServer::on_connect` hook: keeps a duplicate of each TCP socket in
/// the connection's data.
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut Extensions) {
    #[cfg(target_os = "linux")]
    if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsFd;
        if let Ok(fd) = sock.as_fd().try_clone_to_owned() {
            ext.insert(Arc::new(Peer(fd)));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (conn, ext);
}

impl Peer {
    /// False once the peer closed or reset the connection.
    #[cfg(target_os = "linux")]
    pub fn still_there(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut byte = [0u8; 1];
        // SAFETY: recv into a 1-byte buffer we own, on a descriptor we own;
        // MSG_PEEK leaves the data for actix, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => false,
            n if n > 0 => true,
            _ => matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINTR)
            ),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn still_there(&self) -> bool {
        true
    }
}

/// The liveness check of a request's connection, if it has one.
pub fn still_there(req: &HttpRequest) -> Option<StillThere> {
    let peer = req.conn_data::<Arc<Peer>>()?.clone();
    Some(Arc::new(move || peer.still_there()))
}
