//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps (Linux 5.14+), which aya 0.14 offers only
//! for queues and stacks: it removes an entry and returns the value that was removed, under the
//! map bucket's lock. Garbage collection and revocation rely on it to never lose a refresh the
//! kernel wrote after they read an entry (see `learned.rs`).

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Removes `key` from the hash map `map` and returns the removed value; `None` if absent.
pub(crate) fn lookup_and_delete<K: Pod, V: Pod>(
    map: &MapData,
    key: &K,
) -> Result<Option<V>, MapError> {
    let mut value = MaybeUninit::<V>::zeroed();
    // SAFETY: `bpf_attr` is a plain C union for which all-zero is a valid value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the map-element member of the union is the one this command reads.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    u.key = std::ptr::from_ref(key) as u64;
    u.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    // SAFETY: the attribute points to a key of the map's key size and room for one value of the
    // map's value size (`K`/`V` are the map's types, checked when the map was opened), both
    // alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM as libc::c_long,
            std::ptr::from_mut(&mut attr),
            size_of::<bpf_attr>() as libc::c_long,
        )
    };
    if ret == 0 {
        // SAFETY: the kernel wrote a whole value; every bit pattern is a valid `V` (`Pod`).
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let io_error = io::Error::last_os_error();
    if io_error.raw_os_error() == Some(libc::ENOENT) {
        return Ok(None);
    }
    Err(MapError::SyscallError(SyscallError {
        call: "bpf_map_lookup_and_delete_elem",
        io_error,
    }))
}
