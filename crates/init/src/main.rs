//! `scalebox-init`: PID 1 of every Scalebox guest. Mounts the pseudo filesystems, loads the
//! kernel modules shipped in the initramfs, talks to the host agent over the control channel,
//! mounts the instance's root filesystem and switches into it (staying PID 1), configures the
//! network, secrets and volumes, runs the workload, forwards its output and signals, reaps
//! zombies, reports how it ended (code, signal, OOM) and powers the VM off. It never panics on
//! bad input: fatal errors are reported on the channel and the console, then the VM powers off.

mod boot;
mod channel;
mod net;
mod sys;
mod workload;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalebox_init::proto::{self, BootConfig, ExitStatus, GuestMsg, HostMsg, RunConfig};
use sys::Res;

const DEFAULT_SECRETS_PATH: &str = "/run/secrets/scalebox.env";

/// What the guest is doing, for `hello` answers.
#[derive(Default)]
struct State {
    phase: &'static str,
    pid: Option<i32>,
    exit: Option<ExitStatus>,
    /// How `exec` commands run (the workload's identity), once it runs.
    exec: Option<ExecCtx>,
}

/// The workload's identity, environment and working directory, reused by `exec`.
#[derive(Clone)]
struct ExecCtx {
    ids: workload::Ids,
    env: Vec<String>,
    workdir: String,
}

/// Pseudo-terminal masters of running tty `exec`s, by exec id (input and resizes go there).
static TTYS: Mutex<Option<std::collections::HashMap<String, File>>> = Mutex::new(None);

/// Running `exec` commands: pid → where to deliver its exit status. `reap_until` (the only
/// waiter, on the main thread) looks pids up here.
static EXECS: Mutex<Option<std::collections::HashMap<libc::pid_t, mpsc::Sender<ExitStatus>>>> =
    Mutex::new(None);

/// Where guest messages go.
struct Out {
    /// Bumped whenever a new host connection replaces the old one (vsock).
    generation: u64,
    /// The serial port, or the newest vsock connection (`None` while no host is connected).
    file: Option<File>,
}

#[derive(Clone)]
struct Chan {
    out: Arc<Mutex<Out>>,
    /// Held for a whole message, so messages from several threads never interleave.
    sending: Arc<Mutex<()>>,
    state: Arc<Mutex<State>>,
    link: Arc<channel::Link>,
}

impl Chan {
    /// Writes one message. Writes are non-blocking: while no host is connected (or reads) a
    /// write would block forever, so we retry for a while and then drop the message (the host
    /// asks again with `attach` when it connects).
    fn send(&self, m: &GuestMsg) {
        let data = proto::encode(m);
        // Workload output may be dropped after ~2 s without a reader (no agent connected: the
        // workload must not stall). Everything else (exit statuses, exec answers) waits up to
        // ~60 s, so a busy host that reads late still gets it.
        let patience = if matches!(m, GuestMsg::Log { .. }) {
            100
        } else {
            3000
        };
        let Ok(_turn) = self.sending.lock() else {
            return;
        };
        let mut off = 0;
        let mut tries = 0;
        let mut generation = None;
        while off < data.len() {
            let r = {
                let Ok(mut o) = self.out.lock() else { return };
                if generation.is_some_and(|g| g != o.generation) {
                    off = 0; // a new host connected mid-message: send all of it there
                }
                generation = Some(o.generation);
                match o.file.as_mut() {
                    Some(f) => f.write(&data[off..]),
                    // Nobody to greet: every host sends `attach` when it connects.
                    None if matches!(m, GuestMsg::Hello { .. }) => return,
                    None => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            };
            match r {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < patience => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return,
            }
        }
    }

    fn hello(&self) {
        let s = self.state.lock().expect("state lock");
        self.send(&GuestMsg::Hello {
            version: proto::VERSION,
            state: s.phase.into(),
            pid: s.pid,
            exit: s.exit.clone(),
        });
    }
}

fn console(msg: &str) {
    eprintln!("scalebox-init: {msg}");
}

/// What the host asked the guest to do.
enum Start {
    Run(Box<RunConfig>),
    Boot(Box<BootConfig>),
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--sandbox-helper") {
        boot::helper_main();
    }
    if std::process::id() != 1 {
        console("must run as PID 1 (it is the init of a Scalebox guest)");
        std::process::exit(2);
    }
    // Block the signals PID 1 handles itself; children get a clean mask in `spawn`.
    if let Err(e) = sys::mount_pseudo().and_then(|()| sys::load_modules()) {
        console(&e);
        sys::power_off();
    }
    let chan = match open_channel() {
        Ok(c) => c,
        Err(e) => {
            console(&e);
            sys::power_off();
        }
    };
    if let Err(e) = run(&chan) {
        console(&e);
        chan.send(&GuestMsg::Error { message: e });
        std::thread::sleep(Duration::from_millis(200));
    }
    sys::power_off();
}

/// Opens the control channel (virtio-serial port or vsock listener, see `channel`).
fn open_channel() -> Res<Chan> {
    let link = channel::open()?;
    let file = match &link {
        channel::Link::Port(p) => Some(p.try_clone().map_err(|e| format!("dup channel: {e}"))?),
        channel::Link::Vsock(_) => None,
    };
    let state = State {
        phase: "waiting",
        ..State::default()
    };
    Ok(Chan {
        out: Arc::new(Mutex::new(Out {
            generation: 0,
            file,
        })),
        sending: Arc::default(),
        state: Arc::new(Mutex::new(state)),
        link: Arc::new(link),
    })
}

/// Starts reading host messages: from the serial port, or from every vsock connection as it
/// comes (the newest one also gets the guest's messages).
fn start_readers(chan: &Chan, runs: mpsc::Sender<Start>) -> Res<()> {
    match &*chan.link {
        channel::Link::Port(p) => {
            let input = p.try_clone().map_err(|e| format!("dup channel: {e}"))?;
            let c = chan.clone();
            std::thread::spawn(move || reader(&c, &input, &runs, false));
        }
        channel::Link::Vsock(_) => {
            let c = chan.clone();
            std::thread::spawn(move || acceptor(&c, &runs));
        }
    }
    Ok(())
}

/// Accepts host connections on the vsock listener for as long as the guest runs.
fn acceptor(chan: &Chan, runs: &mpsc::Sender<Start>) {
    let channel::Link::Vsock(listener) = &*chan.link else {
        return;
    };
    loop {
        let conn = match channel::accept(listener) {
            Ok(c) => c,
            Err(e) => {
                console(&e);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(w) = conn.try_clone() else { continue };
        {
            let mut o = chan.out.lock().expect("out lock");
            o.generation += 1;
            o.file = Some(w);
        }
        let (c, r) = (chan.clone(), runs.clone());
        std::thread::spawn(move || {
            reader(&c, &conn, &r, true);
            // The host hung up: stop writing there, unless a newer connection took over.
            let mut o = c.out.lock().expect("out lock");
            if o.file
                .as_ref()
                .is_some_and(|f| channel::same_object(f, &conn))
            {
                o.file = None;
            }
        });
    }
}

/// Reads host messages (the fd is non-blocking: wait with poll, then read what is there):
/// answers `attach`, forwards `run` to the main thread, delivers signals. A serial port reads
/// nothing while no host is connected and is read forever; a vsock connection (`hangup_ends`)
/// is read until the host hangs up.
fn reader(chan: &Chan, mut input: &File, runs: &mpsc::Sender<Start>, hangup_ends: bool) {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut pfd = libc::pollfd {
            fd: input.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        match input.read(&mut chunk) {
            Ok(0) if hangup_ends => return,
            Ok(0) => std::thread::sleep(Duration::from_millis(100)), // no host connected
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) if hangup_ends => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            handle(chan, &line, runs);
        }
        if buf.len() > proto::MAX_LINE {
            console("control message too long; dropped");
            buf.clear();
        }
    }
}

fn handle(chan: &Chan, line: &[u8], runs: &mpsc::Sender<Start>) {
    match proto::decode::<HostMsg>(line.trim_ascii_end()) {
        Ok(Some(HostMsg::Attach)) => chan.hello(),
        Ok(Some(HostMsg::Run { config })) => {
            let mut s = chan.state.lock().expect("state lock");
            if s.phase == "waiting" {
                s.phase = "starting";
                let _ = runs.send(Start::Run(config));
            }
        }
        Ok(Some(HostMsg::Boot { config })) => {
            let mut s = chan.state.lock().expect("state lock");
            if s.phase == "waiting" {
                s.phase = "booting";
                let _ = runs.send(Start::Boot(config));
            }
        }
        Ok(Some(HostMsg::Sync)) => {
            // SAFETY: plain syscall.
            unsafe { libc::sync() };
            chan.send(&GuestMsg::Synced);
        }
        Ok(Some(HostMsg::Exec {
            id,
            argv,
            tty,
            rows,
            cols,
        })) => {
            let ctx = chan.state.lock().expect("state lock").exec.clone();
            let c = chan.clone();
            // The terminal exists (and is registered for input and resizes) before the next
            // message is read, so nothing sent right after `exec` is lost.
            let pty = if tty {
                match openpty(rows.max(1), cols.max(1)) {
                    Ok((m, s)) => {
                        if let Ok(m2) = m.try_clone() {
                            TTYS.lock()
                                .expect("ttys lock")
                                .get_or_insert_with(Default::default)
                                .insert(id.clone(), m2);
                        }
                        Some(Ok((m, s)))
                    }
                    Err(e) => Some(Err(e)),
                }
            } else {
                None
            };
            std::thread::spawn(move || exec(c, id, argv, ctx, pty));
        }
        Ok(Some(HostMsg::ExecInput { id, data_hex })) => {
            let Ok(data) = hex::decode(&data_hex) else {
                return console("exec_input: data_hex is not hex");
            };
            let master = TTYS
                .lock()
                .expect("ttys lock")
                .as_ref()
                .and_then(|m| m.get(&id).and_then(|f| f.try_clone().ok()));
            if let Some(mut m) = master {
                let _ = m.write_all(&data);
            }
        }
        Ok(Some(HostMsg::ExecResize { id, rows, cols })) => {
            use std::os::fd::AsRawFd;
            if let Some(m) = TTYS
                .lock()
                .expect("ttys lock")
                .as_ref()
                .and_then(|m| m.get(&id))
            {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ on a pty master we own, with a valid winsize.
                unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
        }
        Ok(Some(HostMsg::Signal { signal })) => {
            let pid = chan.state.lock().expect("state lock").pid;
            if let Some(pid) = pid {
                // SAFETY: plain kill.
                unsafe { libc::kill(pid, signal) };
            }
        }
        Ok(None) => {}
        Err(e) => console(&e),
    }
}

fn run(chan: &Chan) -> Res<()> {
    let (tx, rx) = mpsc::channel();
    start_readers(chan, tx)?;
    chan.hello();
    let cfg = match rx
        .recv()
        .map_err(|_| "control channel closed before a run configuration arrived".to_string())?
    {
        Start::Run(cfg) => *cfg,
        Start::Boot(cfg) => {
            // The helper that serves the channel after init execs gets the port or the listener.
            let (channel::Link::Port(f) | channel::Link::Vsock(f)) = &*chan.link;
            let handoff = f.try_clone().map_err(|e| format!("dup channel: {e}"))?;
            return boot::boot(&cfg, &handoff);
        }
    };

    sys::switch_root(cfg.root_device.as_deref().unwrap_or("/dev/vda"))?;
    if let Some(h) = &cfg.hostname {
        sys::set_hostname(h)?;
    }
    net::configure(&cfg.net)?;
    for m in &cfg.mounts {
        if !sys::wait_for_path(Path::new(&m.device), 200) {
            return Err(format!("volume device {} did not appear", m.device));
        }
        let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
        sys::mount(&m.device, &m.path, Some("ext4"), flags, None)?;
    }
    let (ids, home) = workload::resolve_user(cfg.user.as_deref())?;
    write_secrets(&cfg, ids)?;
    let env = workload::environment(&cfg, &home);

    let oom_before = sys::oom_kills();
    let started = workload::spawn(&cfg, ids, &env)?;
    {
        let mut s = chan.state.lock().expect("state lock");
        s.phase = "running";
        s.pid = Some(started.pid);
        s.exec = Some(ExecCtx {
            ids,
            env: env.clone(),
            workdir: cfg.workdir.clone().unwrap_or_else(|| "/".into()),
        });
    }
    chan.send(&GuestMsg::Started { pid: started.pid });
    let logs = [
        forward(chan.clone(), started.stdout, "stdout"),
        forward(chan.clone(), started.stderr, "stderr"),
    ];
    let status = reap_until(started.pid);
    for l in logs {
        let _ = l.join();
    }
    let status = ExitStatus {
        oom: sys::oom_kills() > oom_before,
        ..status
    };
    {
        let mut s = chan.state.lock().expect("state lock");
        s.phase = "exited";
        s.exit = Some(status.clone());
    }
    chan.send(&GuestMsg::Exit { status });
    // Give the host a moment to read the last messages before power-off tears the port down.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Writes the secrets file on a tmpfs (mode 0400, owned by the workload user) and bind-mounts it
/// read-only at the configured path.
fn write_secrets(cfg: &RunConfig, ids: workload::Ids) -> Res<()> {
    let target = cfg
        .secrets_path
        .clone()
        .unwrap_or_else(|| DEFAULT_SECRETS_PATH.into());
    if !target.starts_with('/') {
        return Err(format!("secrets path {target:?} must be absolute"));
    }
    let store = "/run/scalebox";
    sys::mount(
        "tmpfs",
        store,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0711,size=1m"),
    )?;
    let file = format!("{store}/secrets.env");
    let text = scalebox_types::secrets_file::render(&cfg.secrets);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&file)
            .map_err(|e| format!("create secrets file: {e}"))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("write secrets file: {e}"))?;
    }
    std::os::unix::fs::chown(&file, Some(ids.uid), Some(ids.gid))
        .map_err(|e| format!("chown secrets file: {e}"))?;
    if let Some(parent) = Path::new(&target).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    if !Path::new(&target).exists() {
        File::create(&target).map_err(|e| format!("create mount point {target}: {e}"))?;
    }
    sys::mount(&file, &target, None, libc::MS_BIND, None)?;
    sys::mount(
        &file,
        &target,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    )
}

/// Forwards a pipe to the channel as `log` messages, line by line (long lines in 16 KiB chunks).
fn forward(chan: Chan, fd: OwnedFd, stream: &'static str) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(File::from(fd));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.by_ref().take(16 * 1024).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let data = String::from_utf8_lossy(&buf).into_owned();
                    chan.send(&GuestMsg::Log {
                        stream: stream.into(),
                        data,
                    });
                }
            }
        }
    })
}

/// Runs an `exec` command and reports its output and exit over the channel.
/// A new pseudo-terminal of `rows`×`cols`: (master, slave).
fn openpty(rows: u16, cols: u16) -> Res<(File, File)> {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out-pointers; no name buffer; a valid winsize.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if r != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: openpty returned two new fds we now own.
    Ok(unsafe { (File::from_raw_fd(m), File::from_raw_fd(s)) })
}

fn exec(
    chan: Chan,
    id: String,
    argv: Vec<String>,
    ctx: Option<ExecCtx>,
    tty: Option<Res<(File, File)>>,
) {
    use std::os::unix::process::CommandExt;
    let fail = |error: String| {
        chan.send(&GuestMsg::ExecExit {
            id: id.clone(),
            code: None,
            signal: None,
            error: Some(error),
        })
    };
    let Some(ctx) = ctx else {
        return fail("the workload is not running; exec needs a running instance".into());
    };
    if argv.is_empty() {
        return fail("empty command".into());
    }
    let prog = match workload::find_in_path(&argv[0], &ctx.env) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(ctx.env.iter().filter_map(|e| e.split_once('=')))
        .current_dir(&ctx.workdir)
        .uid(ctx.ids.uid)
        .gid(ctx.ids.gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut master = None;
    if let Some(pty) = tty {
        let (m, s) = match pty {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let (Ok(s1), Ok(s2)) = (s.try_clone(), s.try_clone()) else {
            return fail("cannot duplicate the terminal".into());
        };
        cmd.stdin(s).stdout(s1).stderr(s2);
        if !ctx.env.iter().any(|e| e.starts_with("TERM=")) {
            cmd.env("TERM", "xterm");
        }
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; run in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        master = Some(m);
    }
    let (tx, rx) = mpsc::channel();
    // Spawned and registered under this lock, which `reap_until` takes before it reaps: it
    // finds the pid registered, and leaves a child that could not start to `spawn` to reap.
    let child = {
        let mut execs = EXECS.lock().expect("execs lock");
        match cmd.spawn() {
            Ok(c) => {
                execs
                    .get_or_insert_with(Default::default)
                    .insert(c.id() as libc::pid_t, tx);
                c
            }
            Err(e) => {
                drop(execs);
                return fail(format!("cannot start {:?}: {e}", argv[0]));
            }
        }
    };
    let pump = |r: Option<Box<dyn Read + Send>>, stream: &'static str| {
        let (c, id) = (chan.clone(), id.clone());
        std::thread::spawn(move || {
            let Some(r) = r else { return };
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.by_ref().take(16 * 1024).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => c.send(&GuestMsg::ExecOutput {
                        id: id.clone(),
                        stream: stream.into(),
                        data: String::from_utf8_lossy(&buf).into_owned(),
                        data_hex: None,
                    }),
                }
            }
        })
    };
    // The parent's copies of the terminal's slave side must go, so reads of the master end
    // when the command (and whatever it started) is done with it.
    drop(cmd);
    if let Some(m) = master {
        let (c, id2) = (chan.clone(), id.clone());
        let reader = std::thread::spawn(move || {
            let mut m = m;
            let mut buf = [0u8; 8192];
            loop {
                match m.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => c.send(&GuestMsg::ExecOutput {
                        id: id2.clone(),
                        stream: "stdout".into(),
                        data: String::new(),
                        data_hex: Some(hex::encode(&buf[..n])),
                    }),
                }
            }
        });
        let status = rx.recv().unwrap_or(ExitStatus {
            code: None,
            signal: None,
            oom: false,
        });
        let _ = reader.join();
        TTYS.lock()
            .expect("ttys lock")
            .as_mut()
            .map(|m| m.remove(&id));
        return chan.send(&GuestMsg::ExecExit {
            id,
            code: status.code,
            signal: status.signal,
            error: None,
        });
    }
    let mut child = child;
    let outs = [
        pump(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            "stdout",
        ),
        pump(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            "stderr",
        ),
    ];
    for o in outs {
        let _ = o.join();
    }
    let status = rx.recv().unwrap_or(ExitStatus {
        code: None,
        signal: None,
        oom: false,
    });
    chan.send(&GuestMsg::ExecExit {
        id,
        code: status.code,
        signal: status.signal,
        error: None,
    });
}

fn status_of(st: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(st) {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(st)),
            signal: None,
            oom: false,
        }
    } else {
        ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(st)),
            oom: false,
        }
    }
}

/// Reaps every child until `main` exits; returns how it ended. `exec` children's statuses go
/// to their waiting threads.
///
/// A child is reaped only under the `EXECS` lock, which `exec` holds while it spawns: when the
/// command cannot start, std's `spawn` reaps that child itself (and panics if it is gone), so
/// this loop first waits for a child to end without reaping it (`WNOWAIT`), then reaps it under
/// the lock unless `spawn` already did.
fn reap_until(main: libc::pid_t) -> ExitStatus {
    loop {
        // SAFETY: waitid into a zeroed siginfo_t we own.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain waitid on any child, which stays waitable (WNOWAIT).
        if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) } != 0 {
            return ExitStatus {
                code: None,
                signal: None,
                oom: false,
            };
        }
        // SAFETY: waitid filled in a child's siginfo.
        let pid = unsafe { info.si_pid() };
        let mut execs = EXECS.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = 0;
        // SAFETY: plain waitpid on that child; not blocking, as `spawn` may have reaped it.
        if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } != pid {
            continue;
        }
        if pid == main {
            return status_of(st);
        }
        if let Some(w) = execs.as_mut().and_then(|m| m.remove(&pid)) {
            let _ = w.send(status_of(st));
        }
    }
}
