//! The impairment link of DESIGN §4: faults on packets, identically for both transports.
//!
//! ```text
//!  <prefix>-cli namespace              root namespace              <prefix>-srv namespace
//!  198.51.100.1/24 on tmq0  ── IP ──►  relay thread: loss, delay,  ── IP ──►  192.0.2.1/24 on tmq0
//!  (clients)                ◄── IP ──  reorder, rates, NAT         ◄── IP ──  (the broker)
//! ```
//!
//! Two network namespaces each hold a TUN device; a relay thread in the root namespace
//! reads IP packets from one device and writes them to the other, applying a
//! [`LinkPlan`]. The kernel's TCP in either namespace therefore meets real loss, delay and
//! reordering and retransmits exactly as QUIC does, which a user-space TCP proxy could
//! never show (TCP would retransmit below it). Address rebinding rewrites the client's
//! source port as a NAT does: UDP (QUIC) flows may migrate, TCP connections break.
//!
//! Needs root, `/dev/net/tun` and iproute2's `ip`; without them [`ImpairedLink::create`]
//! returns [`LinkError::Unavailable`] saying which is missing. The addresses come from the
//! documentation ranges and exist only inside the two namespaces.

mod engine;
mod packet;
mod plan;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use engine::{Direction, DirectionStats, LinkStats};
pub use plan::{BurstyLoss, Directions, LinkPlan, Window};

use engine::{Engine, SharedStats};

/// The server side's address (inside `<prefix>-srv`).
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client side's address (inside `<prefix>-cli`).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER_NET: &str = "192.0.2.0/24";
const CLIENT_NET: &str = "198.51.100.0/24";
/// The TUN device's name inside each namespace.
const TUN_NAME: &str = "tmq0";
const NETNS_DIR: &str = "/var/run/netns";
/// How long one `ip` command may take before it is killed.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// The relay wakes at least this often to notice a stop or a new plan.
const RELAY_TICK: Duration = Duration::from_millis(20);
/// Packets read from one device before the relay turns to the other.
const READ_BATCH: usize = 256;

/// Why the link could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The machine cannot host the link (no root, no `/dev/net/tun`, no `ip`).
    #[error("the impairment link is unavailable: {why}")]
    Unavailable { why: String },
    /// A step of setting up the namespaces failed.
    #[error("impairment link setup: {step}: {detail}")]
    Setup { step: String, detail: String },
    /// The plan is not valid.
    #[error("link plan: {0}")]
    Plan(String),
}

fn setup_error(step: impl Into<String>, detail: impl ToString) -> LinkError {
    LinkError::Setup {
        step: step.into(),
        detail: detail.to_string(),
    }
}

/// Checks that this process can build a link: root, `/dev/net/tun` and `ip` with netns.
pub fn check_available() -> Result<(), LinkError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LinkError::Unavailable {
            why: format!("network namespaces and TUN devices need root (running as uid {euid})"),
        });
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LinkError::Unavailable {
            why: "/dev/net/tun does not exist (no TUN support in this kernel or container)".into(),
        });
    }
    match run_ip(&["netns", "list"]) {
        Ok(_) => Ok(()),
        Err(LinkError::Setup { detail, .. }) => Err(LinkError::Unavailable {
            why: format!("`ip netns list` failed (is iproute2 installed?): {detail}"),
        }),
        Err(other) => Err(other),
    }
}

/// Runs `ip ARGS…`, bounded by [`IP_TIMEOUT`], and returns its standard output.
fn run_ip(args: &[&str]) -> Result<String, LinkError> {
    let step = format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| setup_error(&step, format!("cannot run ip: {e}")))?;
    let deadline = Instant::now() + IP_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(setup_error(&step, format!("no answer in {IP_TIMEOUT:?}")));
            }
            Err(e) => return Err(setup_error(&step, e)),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(stdout)
    } else {
        Err(setup_error(&step, format!("{status}: {}", stderr.trim())))
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a fresh thread that has joined the network namespace `name`: sockets and
/// devices it creates belong to that namespace for good, whichever thread uses them later.
pub fn in_namespace<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, LinkError> {
    let ns = File::open(netns_path(name))
        .map_err(|e| setup_error(format!("open namespace {name}"), e))?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(setup_error(format!("enter namespace {name}"), e)),
        // The caller's closure panicked: hand its panic back to the caller.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes `cmd` start inside the network namespace `name` (the effect of
/// `ip netns exec NAME …`, keeping the command's arguments, environment and stdio).
fn enter_on_spawn<'c>(name: &str, cmd: &'c mut Command) -> Result<&'c mut Command, LinkError> {
    let ns = File::open(netns_path(name))
        .map_err(|e| setup_error(format!("open namespace {name}"), e))?;
    // SAFETY: the hook only calls setns (async-signal-safe) on an fd that the closure
    // keeps open, and builds an io::Error from errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Creates the TUN device [`TUN_NAME`] in the calling thread's network namespace.
fn open_tun() -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(TUN_NAME.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `request` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Deletes the namespaces it names when dropped (used while building a link, then by it).
#[derive(Debug)]
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn delete_all(&mut self) {
        for name in self.names.drain(..) {
            if let Err(e) = run_ip(&["netns", "delete", &name]) {
                tracing::warn!(namespace = %name, error = %e, "could not delete namespace");
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// Deletes the namespaces `<prefix>-srv` and `<prefix>-cli` if they exist (left over from a
/// run that crashed before it could clean up) and returns the names it deleted.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, LinkError> {
    let mut deleted = Vec::new();
    for name in [server_ns_name(prefix), client_ns_name(prefix)] {
        if netns_path(&name).exists() {
            run_ip(&["netns", "delete", &name])?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Deletes the namespaces of links named `<tag>-<pid>-<n>` whose process `<pid>` is gone
/// (a run killed before it could clean up) and returns the names it deleted. For callers
/// that name their links so: each link of a process gets its own `<n>`.
pub fn cleanup_dead(tag: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // <tag>-<pid>-<n>-srv / -cli
        let parts: Vec<&str> = name.split('-').collect();
        if parts.len() == 4 && parts[0] == tag && !Path::new("/proc").join(parts[1]).exists() {
            if let Ok(names) = cleanup_stale(&parts[..3].join("-")) {
                deleted.extend(names);
            }
        }
    }
    deleted
}

fn server_ns_name(prefix: &str) -> String {
    format!("{prefix}-srv")
}

fn client_ns_name(prefix: &str) -> String {
    format!("{prefix}-cli")
}

/// What the caller and the relay share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    next_plan: Mutex<Option<(LinkPlan, Instant)>>,
    rebind_requests: AtomicU64,
    stats: Arc<SharedStats>,
}

/// Two namespaces joined by TUN devices through an impairing relay. Dropping it stops the
/// relay and deletes both namespaces.
#[derive(Debug)]
pub struct ImpairedLink {
    server_ns: String,
    client_ns: String,
    shared: Arc<Shared>,
    relay: Option<JoinHandle<()>>,
    namespaces: Namespaces,
}

impl ImpairedLink {
    /// Builds the link: namespaces `<prefix>-srv` (holding [`SERVER_ADDR`]) and
    /// `<prefix>-cli` (holding [`CLIENT_ADDR`]), a TUN device in each, and the relay.
    /// `name_prefix` may hold ASCII letters, digits, `-`, `_` and `.` (at most 40).
    pub fn create(name_prefix: &str, plan: LinkPlan) -> Result<ImpairedLink, LinkError> {
        plan.validate()?;
        if name_prefix.is_empty()
            || name_prefix.len() > 40
            || !name_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(LinkError::Plan(format!(
                "bad namespace prefix {name_prefix:?}: use 1-40 of [A-Za-z0-9._-]"
            )));
        }
        check_available()?;
        let server_ns = server_ns_name(name_prefix);
        let client_ns = client_ns_name(name_prefix);
        let mut namespaces = Namespaces { names: Vec::new() };
        for name in [&server_ns, &client_ns] {
            if netns_path(name).exists() {
                return Err(setup_error(
                    format!("create namespace {name}"),
                    "it already exists (left over from a crashed run? see cleanup_stale)",
                ));
            }
            run_ip(&["netns", "add", name])?;
            namespaces.names.push(name.clone());
        }
        let server_tun = Self::configure(&server_ns, SERVER_ADDR, CLIENT_NET)?;
        let client_tun = Self::configure(&client_ns, CLIENT_ADDR, SERVER_NET)?;

        let shared = Arc::new(Shared::default());
        let engine = Engine::new(plan, Instant::now(), shared.stats.clone());
        let relay_shared = shared.clone();
        let relay = std::thread::Builder::new()
            .name(format!("link-relay-{name_prefix}"))
            .spawn(move || relay(client_tun, server_tun, engine, &relay_shared))
            .map_err(|e| setup_error("start the relay thread", e))?;
        tracing::info!(
            server = %server_ns,
            client = %client_ns,
            "impairment link up: {SERVER_ADDR} <-> {CLIENT_ADDR}"
        );
        Ok(ImpairedLink {
            server_ns,
            client_ns,
            shared,
            relay: Some(relay),
            namespaces,
        })
    }

    /// Creates the TUN device inside `ns`, gives it `addr` and a route to `peer_net`.
    fn configure(ns: &str, addr: Ipv4Addr, peer_net: &str) -> Result<File, LinkError> {
        let tun = in_namespace(ns, open_tun)?
            .map_err(|e| setup_error(format!("create TUN device in {ns}"), e))?;
        let cidr = format!("{addr}/24");
        run_ip(&["-n", ns, "link", "set", "lo", "up"])?;
        run_ip(&["-n", ns, "addr", "add", &cidr, "dev", TUN_NAME])?;
        run_ip(&["-n", ns, "link", "set", TUN_NAME, "up"])?;
        run_ip(&["-n", ns, "route", "add", peer_net, "dev", TUN_NAME])?;
        Ok(tun)
    }

    /// The server's address, reachable from the client namespace through the link.
    pub fn server_addr(&self) -> IpAddr {
        IpAddr::V4(SERVER_ADDR)
    }

    /// The client's address, as the server sees it (until a rebinding changes its port).
    pub fn client_addr(&self) -> IpAddr {
        IpAddr::V4(CLIENT_ADDR)
    }

    /// The server namespace's name (for `ip netns exec`).
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// The client namespace's name.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// Makes `cmd` run in the server namespace when spawned, as `ip netns exec` would,
    /// keeping its arguments, environment and stdio.
    pub fn run_in_server_ns<'c>(&self, cmd: &'c mut Command) -> Result<&'c mut Command, LinkError> {
        enter_on_spawn(&self.server_ns, cmd)
    }

    /// Makes `cmd` run in the client namespace when spawned.
    pub fn run_in_client_ns<'c>(&self, cmd: &'c mut Command) -> Result<&'c mut Command, LinkError> {
        enter_on_spawn(&self.client_ns, cmd)
    }

    /// Runs `f` on a thread inside the server namespace: bind listeners here.
    pub fn in_server_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LinkError> {
        in_namespace(&self.server_ns, f)
    }

    /// Runs `f` on a thread inside the client namespace: create client sockets here.
    pub fn in_client_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LinkError> {
        in_namespace(&self.client_ns, f)
    }

    /// Replaces the plan while the link runs; its clock (blackholes, timed rebindings)
    /// starts now. Packets already in flight keep their schedule.
    pub fn set_plan(&self, plan: LinkPlan) -> Result<(), LinkError> {
        plan.validate()?;
        let mut next = self
            .shared
            .next_plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *next = Some((plan, Instant::now()));
        Ok(())
    }

    /// Rebinds the client's NAT now: every client flow gets a new source port.
    pub fn rebind_now(&self) {
        self.shared.rebind_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// What the link has done so far.
    pub fn stats(&self) -> LinkStats {
        self.shared.stats.snapshot()
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(relay) = self.relay.take() {
            if relay.join().is_err() {
                tracing::warn!("the link relay panicked");
            }
        }
        self.namespaces.delete_all();
    }
}

/// The relay loop: until told to stop, read packets from both devices, hand them to the
/// engine, and write out whatever is due. Never panics; IO errors are logged and counted.
fn relay(mut client: File, mut server: File, mut engine: Engine, shared: &Shared) {
    let mut buf = vec![0u8; 65_536];
    let mut last_error: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let update = shared
            .next_plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((plan, start)) = update {
            engine.set_plan(plan, start);
        }
        let now = Instant::now();
        engine.tick(now, shared.rebind_requests.load(Ordering::Relaxed));
        let wait = engine
            .next_due()
            .map_or(RELAY_TICK, |due| due.saturating_duration_since(now))
            .min(RELAY_TICK);
        let mut fds = [
            libc::pollfd {
                fd: client.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: server.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of two pollfd; the timeout outlives the call.
        let ready = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                report(&mut last_error, "poll", &e);
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        let sides = [
            (fds[0].revents, Direction::ToServer),
            (fds[1].revents, Direction::ToClient),
        ];
        for (revents, direction) in sides {
            if revents == 0 {
                continue;
            }
            let device = match direction {
                Direction::ToServer => &mut client,
                Direction::ToClient => &mut server,
            };
            for _ in 0..READ_BATCH {
                match device.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => engine.ingest(direction, buf[..n].to_vec(), Instant::now()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        report(&mut last_error, "read", &e);
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        while let Some((direction, packet)) = engine.pop_due(now) {
            let device = match direction {
                Direction::ToServer => &mut server,
                Direction::ToClient => &mut client,
            };
            match device.write(&packet) {
                // A TUN device takes a whole packet or nothing.
                Ok(n) if n == packet.len() => shared.stats.count_forwarded(direction),
                Ok(_) => shared.stats.count_dropped(direction),
                Err(e) => {
                    shared.stats.count_dropped(direction);
                    report(&mut last_error, "write", &e);
                }
            }
        }
    }
}

/// Logs a relay IO error, at most once a second.
fn report(last: &mut Option<Instant>, what: &str, error: &io::Error) {
    let due = match last {
        Some(at) => at.elapsed() >= Duration::from_secs(1),
        None => true,
    };
    if due {
        *last = Some(Instant::now());
        tracing::warn!(%error, "impairment link relay: {what} failed");
    }
}
