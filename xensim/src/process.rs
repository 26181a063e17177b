//! Naming and killing the process at the other end of a host connection, safely.
//!
//! The host kills a destroyed domain's processes, as a domain's vCPUs vanish with it. It must
//! never signal a process that merely reuses a dead one's id, so it names each process by a
//! pidfd taken when the process connected.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};

/// The process at the other end of a Unix socket, as a pidfd, and its process id.
///
/// `SO_PEERPIDFD` (Linux 6.5) names the very process that connected. Older kernels (Debian 12
/// runs 6.1) give only the id (`SO_PEERCRED`); the pidfd is then opened from it at once and kept
/// only if the connection is still open afterwards, so the process was alive (and its id not yet
/// reusable) when the pidfd was taken. What remains: a process that handed its connection to a
/// child and exited in that instant; the host then kills nothing of it rather than a stranger.
pub fn peer_process(sock: BorrowedFd<'_>) -> io::Result<(OwnedFd, libc::pid_t)> {
    let pid = getsockopt(&sock, sockopt::PeerCredentials)?.pid();
    if let Ok(pidfd) = getsockopt(&sock, sockopt::PeerPidfd) {
        return Ok((pidfd, pid));
    }
    let pidfd = pidfd_open(pid)?;
    if !still_connected(sock)? {
        return Err(Errno::ESRCH.into());
    }
    Ok((pidfd, pid))
}

/// `pidfd_open(2)`. Hand-written: nix 0.32 has no wrapper for it.
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from(Errno::EBADF))?;
    let fd = Errno::result(fd)?;
    // SAFETY: on success pidfd_open returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the peer of a socket still holds its end (no hang-up pending).
fn still_connected(sock: BorrowedFd<'_>) -> io::Result<bool> {
    // nix names no POLLRDHUP (Linux only): the bit is libc's.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(sock, rdhup)];
    poll(&mut fds, PollTimeout::ZERO)?;
    let gone = PollFlags::POLLHUP | rdhup | PollFlags::POLLERR;
    Ok(!fds[0].revents().is_some_and(|r| r.intersects(gone)))
}

/// Send SIGKILL to the process a pidfd names (a no-op if it has exited). Hand-written: nix 0.32
/// has no `pidfd_send_signal`.
pub fn kill_process(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo takes no other pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn the_peer_process_is_named_by_a_pidfd_and_a_gone_process_is_not_signalled() {
        let (mine, theirs) = crate::wire::seqpacket_pair().expect("socketpair");
        let (pidfd, pid) = peer_process(mine.as_fd()).expect("the peer (this process)");
        assert_eq!(pid, std::process::id() as libc::pid_t);
        drop((pidfd, theirs));

        // A child that has exited and been reaped: its pidfd signals nobody, and says so as Ok.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pidfd = pidfd_open(child.id() as libc::pid_t).expect("pidfd_open");
        child.wait().expect("reap the child");
        kill_process(pidfd.as_fd()).expect("no error for a process that has gone");
    }
}
