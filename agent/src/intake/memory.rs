//! Reading another process's memory: `process_vm_readv`, batched, with no cooperation
//! from the program (ptrace permission on it is enough).

use std::io;

/// Reads another process's memory with `process_vm_readv` (needs ptrace permission on
/// it: same user, or CAP_SYS_PTRACE).
pub struct ProcMem {
    pid: libc::pid_t,
}

impl ProcMem {
    pub fn new(pid: u32) -> ProcMem {
        ProcMem {
            pid: pid as libc::pid_t,
        }
    }

    /// Fills `buf` from `addr`; a short read is an error.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_many(&mut [(addr, buf)])
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Several reads in one system call (at most 1024 at once, IOV_MAX).
    pub fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        for chunk in reads.chunks_mut(1024) {
            let local: Vec<libc::iovec> = chunk
                .iter_mut()
                .map(|(_, b)| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|(a, b)| libc::iovec {
                    iov_base: *a as usize as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            let want: usize = chunk.iter().map(|(_, b)| b.len()).sum();
            // SAFETY: every local iovec points into a live, exclusively borrowed buffer of
            // the stated length; the remote iovecs are only read by the kernel, which
            // checks them against the target's address space.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n as usize != want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read from pid {}: {n} of {want} bytes", self.pid),
                ));
            }
        }
        Ok(())
    }
}

/// The little-endian word at `off` of a block read from the process; callers size their
/// blocks to hold every offset they read.
pub fn u64_at(b: &[u8], off: u32) -> u64 {
    let off = off as usize;
    u64::from_le_bytes(b[off..off + 8].try_into().expect("in bounds"))
}
