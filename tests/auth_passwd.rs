//! Password files both ways with mosquitto: files `mosquitto_passwd` writes load into
//! [`Authenticator`], and files `twinmq passwd` writes are accepted by the `mosquitto`
//! broker. Both need Debian's `mosquitto` package (not `mosquitto-clients`) and are skipped,
//! saying so, when its programs are absent. The `twinmq passwd` command line is tested
//! on its own.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use twinmq::broker::auth::{Authenticator, Identity, PasswordFile};
use twinmq::config::{Config, Overrides};
use twinmq::protocol::ReasonCode;

const MOSQUITTO_PASSWD: &str = "mosquitto_passwd";
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const MOSQUITTO_PUB: &str = "mosquitto_pub";

#[test]
fn files_written_by_mosquitto_passwd_are_accepted() {
    if !installed(MOSQUITTO_PASSWD) {
        eprintln!(
            "SKIPPED files_written_by_mosquitto_passwd_are_accepted: `{MOSQUITTO_PASSWD}` is \
             not installed (Debian package `mosquitto`)"
        );
        return;
    }
    let dir = temp_dir("mosquitto-passwd");
    let file = dir.join("passwords");
    let users: [(&str, &[&str], &str); 5] = [
        ("alice", &["-c"], "correct horse battery staple"),
        ("bob", &[], "hunter2"),
        ("carol", &["-H", "sha512"], "s3cret"),
        ("dave", &["-I", "1000"], "pässwörd"),
        ("erin smith", &["-H", "sha512-pbkdf2"], "with space"),
    ];
    for (user, flags, password) in users {
        let out = run(Command::new(MOSQUITTO_PASSWD)
            .args(flags)
            .arg("-b")
            .arg(&file)
            .arg(user)
            .arg(password));
        assert!(out.status.success(), "mosquitto_passwd {user}: {out:?}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("carol:$6$"), "{text}");
    assert!(text.contains("dave:$7$1000$"), "{text}");

    let auth = authenticator_for(&file, false);
    for (user, _, password) in users {
        assert_eq!(
            auth.authenticate(Some(user), Some(password.as_bytes()), None),
            Ok(Identity::User(user.to_string())),
            "{user}"
        );
        assert_eq!(
            auth.authenticate(Some(user), Some(b"not it"), None),
            Err(ReasonCode::BadUserNameOrPassword),
            "{user}"
        );
    }
    assert_eq!(
        auth.authenticate(None, None, None),
        Err(ReasonCode::NotAuthorized)
    );
}

#[test]
fn the_mosquitto_broker_accepts_files_written_by_twinmq_passwd() {
    if !Path::new(MOSQUITTO).exists() || !installed(MOSQUITTO_PUB) {
        eprintln!(
            "SKIPPED the_mosquitto_broker_accepts_files_written_by_twinmq_passwd: needs \
             {MOSQUITTO} (Debian package `mosquitto`) and {MOSQUITTO_PUB}"
        );
        return;
    }
    let dir = temp_dir("mosquitto-broker");
    let file = dir.join("passwords");
    twinmq_passwd(&["-b", path(&file), "alice", "correct horse"], None);
    twinmq_passwd(&["-I", "2000", path(&file), "bob"], Some("hunter2\n"));

    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             # Run as root, keep root: the file is readable by its owner only.\nuser root\n",
            file.display()
        ),
    )
    .unwrap();
    let mut broker = Running(
        Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until_running(&mut broker.0);

    let publish = |user: &str, password: &str| {
        run(Command::new(MOSQUITTO_PUB)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", user, "-P", password, "-t", "t", "-m", "m"]))
        .status
        .success()
    };
    assert!(publish("alice", "correct horse"));
    assert!(publish("bob", "hunter2"));
    assert!(!publish("alice", "wrong"));
    assert!(!publish("mallory", "hunter2"));
    drop(broker);
}

#[test]
fn twinmq_passwd_adds_updates_and_deletes_users() {
    let dir = temp_dir("twinmq-passwd");
    let file = dir.join("passwords");

    twinmq_passwd(&["-b", path(&file), "alice", "one"], None);
    twinmq_passwd(&[path(&file), "bob"], Some("two\r\n"));
    twinmq_passwd(&[path(&file), "carol", "-b", "three", "-I", "500"], None);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$7$101$"), "{text}");
    assert!(text.contains("\ncarol:$7$500$"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a new password file is for its owner only"
        );
    }

    // Changing a password keeps the user's place and the other users.
    twinmq_passwd(&["-b", path(&file), "alice", "uno"], None);
    let auth = authenticator_for(&file, false);
    let ok = |auth: &Authenticator, user: &str, password: &str| {
        auth.authenticate(Some(user), Some(password.as_bytes()), None)
            == Ok(Identity::User(user.to_string()))
    };
    assert!(ok(&auth, "alice", "uno") && !ok(&auth, "alice", "one"));
    assert!(ok(&auth, "bob", "two"));
    assert!(ok(&auth, "carol", "three"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:"), "{text}");

    twinmq_passwd(&["-D", path(&file), "bob"], None);
    let auth = authenticator_for(&file, false);
    assert!(!ok(&auth, "bob", "two") && ok(&auth, "carol", "three"));

    // -c starts the file over.
    twinmq_passwd(&["-c", "-b", path(&file), "dave", "four"], None);
    let auth = authenticator_for(&file, false);
    assert!(ok(&auth, "dave", "four") && !ok(&auth, "carol", "three"));
}

#[test]
fn twinmq_passwd_refuses_bad_input_and_names_the_problem() {
    let dir = temp_dir("twinmq-passwd-errors");
    let file = dir.join("passwords");

    let out = twinmq_passwd_output(&["-D", path(&file), "nobody"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    twinmq_passwd(&["-b", path(&file), "alice", "one"], None);
    let out = twinmq_passwd_output(&["-D", path(&file), "nobody"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"nobody\" is not in"),
        "{}",
        stderr(&out)
    );

    let out = twinmq_passwd_output(&["-b", path(&file), "a:b", "pw"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("contains `:`"), "{}", stderr(&out));

    let out = twinmq_passwd_output(&[path(&file), "bob"], Some("\n"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("empty password"), "{}", stderr(&out));

    // A file that does not load is not rewritten.
    std::fs::write(&file, "alice:plain\n").unwrap();
    let out = twinmq_passwd_output(&["-b", path(&file), "bob", "pw"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "alice:plain\n");
}

/// Loads the file the way the server will: through the configuration.
fn authenticator_for(file: &Path, anonymous: bool) -> Authenticator {
    let overrides = Overrides::from_assignments([
        format!("auth.password_file={}", file.display()),
        format!("auth.allow_anonymous={anonymous}"),
    ])
    .unwrap();
    let config = Config::load(None, &overrides).unwrap();
    let auth = Authenticator::load(&config.auth, config.anonymous_allowed()).unwrap();
    assert!(!PasswordFile::load(file).unwrap().is_empty());
    auth
}

fn twinmq_passwd(args: &[&str], stdin: Option<&str>) {
    let out = twinmq_passwd_output(args, stdin);
    assert!(
        out.status.success(),
        "twinmq passwd {args:?}: {}",
        stderr(&out)
    );
}

fn twinmq_passwd_output(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;

    let mut child = Command::new(env!("CARGO_BIN_EXE_twinmq"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("twinmq-auth-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Reads mosquitto's log (stderr) up to "running", which it prints once its listeners are
/// open, then keeps draining it on a thread so that the broker never blocks on the pipe.
fn wait_until_running(child: &mut Child) {
    use std::io::{BufRead, BufReader};

    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        match log.next() {
            Some(Ok(line)) if line.contains(" running") => break,
            Some(Ok(line)) => seen.push(line),
            _ => panic!("mosquitto exited before running: {seen:#?}"),
        }
    }
    std::thread::spawn(move || log.for_each(drop));
}

/// Kills the broker when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
