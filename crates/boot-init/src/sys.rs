//! Thin wrappers over the system calls an init needs: mount, finit_module, the QEMU debug-exit
//! port, power-off, and IPv4 interface setup by ioctl. Each returns `std::io::Error` with the
//! errno; callers add context.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2). `data` is the filesystem-specific option string.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (source, target, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let data = data.map(cstr).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })
}

/// What loading one module did.
#[derive(Debug, PartialEq, Eq)]
pub enum ModuleLoad {
    Loaded,
    /// EEXIST: already loaded (or built in).
    AlreadyThere,
}

/// finit_module(2) on an uncompressed .ko file.
pub fn load_module(path: &Path) -> io::Result<ModuleLoad> {
    let file = File::open(path)?;
    let params = c"";
    // SAFETY: the fd is open for the duration of the call; params is a valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(ModuleLoad::Loaded);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(ModuleLoad::AlreadyThere)
    } else {
        Err(err)
    }
}

/// Writes `value` to QEMU's isa-debug-exit device (I/O port 0xf4), which ends QEMU with status
/// `(value << 1) | 1`. Returns only if the device is absent or the port cannot be opened.
pub fn qemu_debug_exit(value: u8) -> io::Result<()> {
    const PORT: u16 = 0xf4;
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    check(unsafe { libc::ioperm(libc::c_ulong::from(PORT), 4, 1) })?;
    // SAFETY: the port was granted above; writing to an absent ISA port is ignored by the
    // hardware (and by QEMU), so the worst case is that nothing happens.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") PORT, in("al") value, options(nomem, nostack));
    }
    Ok(())
}

/// Flushes file systems and powers the machine off (with `-no-reboot`, QEMU exits with 0).
pub fn power_off() -> io::Error {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    io::Error::last_os_error()
}

/// Flushes file systems and reboots (with `-no-reboot`, QEMU exits with 0).
pub fn reboot() -> io::Error {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    io::Error::last_os_error()
}

/// Asks the kernel to re-read the partition table of a whole-disk device (BLKRRPART). Only
/// works while none of its partitions is in use.
pub fn reread_partitions(disk: &Path) -> io::Result<()> {
    const BLKRRPART: libc::c_ulong = 0x125f;
    let file = File::open(disk)?;
    // SAFETY: BLKRRPART takes no argument; the fd is open.
    check(unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART as _) })
}

/// The names of the network interfaces other than loopback, sorted.
pub fn ethernet_interfaces() -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| String::from_utf8_lossy(e.file_name().as_bytes()).into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    Ok(names)
}

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCADDRT: libc::c_ulong = 0x890b;
const RTF_UP: libc::c_ushort = 0x1;
const RTF_GATEWAY: libc::c_ushort = 0x2;

/// `struct ifreq` with the sockaddr member of the union (40 bytes on x86_64).
#[repr(C)]
struct IfreqAddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

/// `struct ifreq` with the flags member of the union.
#[repr(C)]
struct IfreqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct rtentry` from <linux/route.h> (glibc's libc bindings lack it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    }
}

fn ifname(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

struct Socket(libc::c_int);

impl Socket {
    fn inet_dgram() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the fd is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(fd)?;
        Ok(Socket(fd))
    }

    /// ioctl with a pointer to a request struct of type T.
    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a #[repr(C)] struct laid out as the kernel expects for `request`.
        check(unsafe { libc::ioctl(self.0, request, arg as *mut T) })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// Sets the interface up (and, when given, its IPv4 address and netmask).
pub fn interface_up(name: &str, addr: Option<([u8; 4], u8)>) -> io::Result<()> {
    let sock = Socket::inet_dgram()?;
    if let Some((ip, prefix)) = addr {
        let mut req = IfreqAddr {
            name: ifname(name)?,
            addr: sockaddr(ip),
            _pad: [0; 8],
        };
        sock.ioctl(SIOCSIFADDR, &mut req)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        req.addr = sockaddr(mask.to_be_bytes());
        sock.ioctl(SIOCSIFNETMASK, &mut req)?;
    }
    let mut flags = IfreqFlags {
        name: ifname(name)?,
        flags: 0,
        _pad: [0; 22],
    };
    sock.ioctl(SIOCGIFFLAGS, &mut flags)?;
    flags.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    sock.ioctl(SIOCSIFFLAGS, &mut flags)
}

/// Adds the default IPv4 route via `gateway`.
pub fn add_default_route(gateway: [u8; 4]) -> io::Result<()> {
    let sock = Socket::inet_dgram()?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr([0; 4]),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr([0; 4]),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    sock.ioctl(SIOCADDRT, &mut rt)
}

/// Loads `kernel` and `initrd` for a kexec with `cmdline` (kexec_file_load(2)).
pub fn kexec_file_load(kernel: &File, initrd: &File, cmdline: &str) -> io::Result<()> {
    let line = cstr(cmdline)?;
    let len = line.as_bytes_with_nul().len();
    // SAFETY: both fds are open; the command line is NUL-terminated and `len` counts the NUL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            len,
            line.as_ptr(),
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Unloads a kernel loaded by [`kexec_file_load`] (`KEXEC_FILE_UNLOAD`).
pub fn kexec_unload() -> io::Result<()> {
    const KEXEC_FILE_UNLOAD: libc::c_ulong = 1;
    // SAFETY: with KEXEC_FILE_UNLOAD the kernel ignores the fds and the command line.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1 as libc::c_int,
            -1 as libc::c_int,
            0 as libc::c_ulong,
            std::ptr::null::<libc::c_char>(),
            KEXEC_FILE_UNLOAD,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Unmounts `target`.
pub fn umount(target: &str) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), 0) })
}

/// Starts the loaded kexec kernel; returns only on failure.
pub fn reboot_kexec() -> io::Error {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC);
    }
    io::Error::last_os_error()
}

/// A device-mapper ioctl on /dev/mapper/control with a prepared `struct dm_ioctl` buffer.
pub fn dm_ioctl(request: u64, buf: &mut [u8]) -> io::Result<()> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    // SAFETY: the buffer is at least as long as the data_size it declares.
    check(unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) })
}

/// Moves the mount at `from` to `to` (mount --move).
pub fn move_mount(from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid NUL-terminated strings; MS_MOVE takes no data.
    check(unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    })
}

/// Makes `new_root` (a mount point) the root: moves it onto `/` and chroots into it.
pub fn switch_root(new_root: &str) -> io::Result<()> {
    std::env::set_current_dir(new_root)?;
    move_mount(".", "/")?;
    let dot = cstr(".")?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")
}
