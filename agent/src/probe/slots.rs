//! The kernel's slot tables (`GSLOTS`, `CTX_SLOT_TABLE`, `CTX_SITE_TABLE`: `BPF_F_MMAPABLE` arrays) mapped
//! into the agent and read in place, without a system call per entry. Every `unsafe` of
//! the mapping lives here.

use anyhow::{bail, Result};
use aya::Ebpf;
use goroscope_common::{CtxSiteSlot, CtxSlot, GSlot, SLOT_BUSY};

/// A kernel slot table (a `BPF_F_MMAPABLE` array whose entries start with a key word:
/// 0 = free, [`SLOT_BUSY`] = being written), mapped into this process.
pub(super) struct SlotTable<T: Slot> {
    ptr: *mut T,
    pub(super) len: usize,
    bytes: usize,
}

/// An entry type of a slot table.
pub(super) trait Slot: Copy {
    /// The key word (goid, context pointer) and the owning process.
    fn key(&self) -> u64;
    fn tgid(&self) -> u32;
    /// Pointer to the key word of the slot at `p`.
    ///
    /// # Safety
    /// `p` must point into the mapping.
    unsafe fn key_ptr(p: *mut Self) -> *mut u64;
}

impl Slot for GSlot {
    fn key(&self) -> u64 {
        self.goid
    }
    fn tgid(&self) -> u32 {
        self.tgid
    }
    unsafe fn key_ptr(p: *mut Self) -> *mut u64 {
        // SAFETY: the caller guarantees `p` points into the mapping.
        unsafe { &raw mut (*p).goid }
    }
}

impl Slot for CtxSlot {
    fn key(&self) -> u64 {
        self.ctx
    }
    fn tgid(&self) -> u32 {
        self.tgid
    }
    unsafe fn key_ptr(p: *mut Self) -> *mut u64 {
        // SAFETY: the caller guarantees `p` points into the mapping.
        unsafe { &raw mut (*p).ctx }
    }
}

impl Slot for CtxSiteSlot {
    fn key(&self) -> u64 {
        self.key
    }
    fn tgid(&self) -> u32 {
        self.tgid
    }
    unsafe fn key_ptr(p: *mut Self) -> *mut u64 {
        // SAFETY: the caller guarantees `p` points into the mapping.
        unsafe { &raw mut (*p).key }
    }
}

impl<T: Slot> SlotTable<T> {
    pub(super) fn map(ebpf: &Ebpf, name: &str, len: u32) -> Result<SlotTable<T>> {
        use std::os::fd::{AsFd, AsRawFd};
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            bail!("map {name} missing");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let len = len as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * std::mem::size_of::<T>()).div_ceil(page) * page;
        // SAFETY: maps the value area of a BPF array created with BPF_F_MMAPABLE, exactly
        // its size rounded up to pages (what the kernel permits); the mapping stays valid
        // until `munmap` in Drop, independent of the fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of {name}: {}", std::io::Error::last_os_error());
        }
        Ok(SlotTable {
            ptr: ptr.cast(),
            len,
            bytes,
        })
    }

    /// Slot `i` if it holds an entry; `None` if free, being written, or changed while
    /// read (the kernel writes concurrently).
    fn get(&self, i: usize) -> Option<T> {
        debug_assert!(i < self.len);
        // SAFETY: `i < len`, so the slot lies inside the mapping; volatile reads because
        // the kernel writes the memory concurrently. Slots are plain integers.
        unsafe {
            let p = self.ptr.add(i);
            let key_p = T::key_ptr(p);
            let key = std::ptr::read_volatile(key_p);
            if key == 0 || key == SLOT_BUSY {
                return None;
            }
            let slot = std::ptr::read_volatile(p);
            (std::ptr::read_volatile(key_p) == key && slot.key() == key).then_some(slot)
        }
    }

    /// Every occupied slot.
    pub(super) fn entries(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// Frees slot `i` if it holds `key` of process `tgid` and `still(slot)` holds for the
    /// record in it (the record the caller judged, not a newer one at the same address);
    /// returns whether it did. Safe against the kernel claiming or reusing the slot
    /// meanwhile: the key word goes `key` → [`SLOT_BUSY`] by compare-and-swap (as the
    /// kernel claims slots), so while it is busy no probe writes the slot, then the
    /// record is checked and the key word set to 0 (freed) or back to `key` (a newer
    /// record the kernel wrote before the swap: kept).
    pub(super) fn free_if(
        &self,
        i: usize,
        tgid: u32,
        key: u64,
        still: impl Fn(&T) -> bool,
    ) -> bool {
        use std::sync::atomic::{AtomicU64, Ordering};
        if i >= self.len || key == 0 || key == SLOT_BUSY {
            return false;
        }
        // SAFETY: `i < len`, so the slot lies inside the mapping (valid until Drop); the
        // key word is the slot's first field, 8-byte aligned (the mapping is page-aligned
        // and every slot type is `repr(C)`, starts with a u64 and has a size that is a
        // multiple of 8). The kernel changes the key word only with atomic
        // compare-and-swap or, while it owns the slot (key word = SLOT_BUSY, which makes
        // our swap fail), with an aligned 8-byte store, atomic on x86-64; so an atomic
        // view of the word is sound for the duration of this call.
        let (p, word) = unsafe {
            let p = self.ptr.add(i);
            (p, AtomicU64::from_ptr(T::key_ptr(p)))
        };
        if word
            .compare_exchange(key, SLOT_BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // SAFETY: in bounds as above; while the key word is SLOT_BUSY (ours) no probe
        // writes the slot, so the volatile read sees a whole record. Slots are plain
        // integers.
        let slot = unsafe { std::ptr::read_volatile(p) };
        let free = slot.tgid() == tgid && still(&slot);
        word.store(if free { 0 } else { key }, Ordering::Release);
        free
    }

    /// Frees every slot of a process that exited.
    pub(super) fn clear(&self, tgid: u32) {
        for i in 0..self.len {
            if self.get(i).is_some_and(|s| s.tgid() == tgid) {
                // SAFETY: in bounds as above; the process is gone, so no probe of it
                // writes this slot any more.
                unsafe { std::ptr::write_volatile(T::key_ptr(self.ptr.add(i)), 0) };
            }
        }
    }
}

impl<T: Slot> Drop for SlotTable<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}
