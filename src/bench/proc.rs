//! What the bench reads from `/proc` (Linux; elsewhere every reading is `None`): a
//! process's CPU time and resident memory, and the kernel's UDP drop counters of the
//! network namespace a process lives in.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every Linux ABI
/// the bench runs on).
const USER_HZ: f64 = 100.0;

fn proc_dir(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string())
}

/// CPU time (user + system) of process `pid` so far.
pub fn cpu(pid: u32) -> Option<Duration> {
    let ticks = stat_ticks(&proc_dir(pid).join("stat"))?;
    Some(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// utime + stime from a `stat` file. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn stat_ticks(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The kernel's UDP counters that mean a datagram was dropped on receipt (every socket of
/// one network namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpDrops {
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
}

impl UdpDrops {
    /// Reads the counters of the network namespace process `pid` lives in.
    pub fn read(pid: u32) -> Option<UdpDrops> {
        let text = std::fs::read_to_string(proc_dir(pid).join("net/snmp")).ok()?;
        UdpDrops::parse(&text)
    }

    fn parse(text: &str) -> Option<UdpDrops> {
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = lines.next()?.split_whitespace().collect();
        let values: Vec<&str> = lines.next()?.split_whitespace().collect();
        let get = |name: &str| -> Option<u64> {
            let i = names.iter().position(|n| *n == name)?;
            values.get(i)?.parse().ok()
        };
        Some(UdpDrops {
            in_errors: get("InErrors")?,
            rcvbuf_errors: get("RcvbufErrors")?,
        })
    }

    pub fn since(self, earlier: UdpDrops) -> UdpDrops {
        UdpDrops {
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_udp_lines_of_snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 100 2 7 90 5 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(
            UdpDrops::parse(text),
            Some(UdpDrops {
                in_errors: 7,
                rcvbuf_errors: 5
            })
        );
    }

    #[test]
    fn reads_this_process_on_linux() {
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            assert!(rss_bytes(me).is_some_and(|b| b > 0));
            assert!(peak_rss_bytes(me).is_some_and(|b| b > 0));
            assert!(cpu(me).is_some());
            assert!(UdpDrops::read(me).is_some());
        }
    }
}
