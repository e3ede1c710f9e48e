//! Starting the workload: user and group from the image's `/etc/passwd`/`/etc/group`, the
//! environment, the working directory, `PATH` search, stdout/stderr pipes.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use scalebox_init::proto::RunConfig;

use crate::sys::Res;

/// Resolved identity.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

fn lookup(file: &str, name: &str) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() >= 3).then(|| {
            let uid = f[2].parse().unwrap_or(0);
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(uid);
            let home = f
                .get(5)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "/".into());
            (uid, gid, home)
        })
    })
}

/// `user[:group]` with names or numbers; returns ids and the home directory.
pub fn resolve_user(spec: Option<&str>) -> Res<(Ids, String)> {
    let Some(spec) = spec.filter(|s| !s.is_empty()) else {
        return Ok((Ids { uid: 0, gid: 0 }, "/root".into()));
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, home) = match u.parse::<u32>() {
        Ok(n) => {
            let by_id = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
                t.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2) == Some(&u)).then(|| {
                        (
                            f.get(3).and_then(|g| g.parse().ok()).unwrap_or(n),
                            f.get(5).unwrap_or(&"/").to_string(),
                        )
                    })
                })
            });
            let (gid, home) = by_id.unwrap_or((n, "/".into()));
            (n, gid, home)
        }
        Err(_) => lookup("/etc/passwd", u)
            .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("/etc/group", g)
                .map(|x| x.0)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    Ok((Ids { uid, gid }, home))
}

/// The environment: defaults (PATH, HOME, HOSTNAME), then the configuration's.
pub fn environment(cfg: &RunConfig, home: &str) -> Vec<String> {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("HOME={home}"),
    ];
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    for kv in &cfg.env {
        set(kv.clone());
    }
    if cfg.secrets_as_env {
        for (k, v) in &cfg.secrets {
            set(format!("{k}={v}"));
        }
    }
    env
}

pub fn find_in_path(prog: &str, env: &[String]) -> Res<String> {
    if prog.contains('/') {
        return Ok(prog.to_owned());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin");
    for dir in path.split(':') {
        let p = format!("{dir}/{prog}");
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            return Ok(p);
        }
    }
    Err(format!("{prog:?} not found in PATH ({path})"))
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A started workload: its pid and the read ends of its stdout and stderr.
pub struct Started {
    pub pid: libc::pid_t,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Forks and execs the workload.
pub fn spawn(cfg: &RunConfig, ids: Ids, env: &[String]) -> Res<Started> {
    if cfg.argv.is_empty() {
        return Err(
            "no command to run: the image has no ENTRYPOINT/CMD and the process type no command"
                .into(),
        );
    }
    let workdir = cfg.workdir.clone().unwrap_or_else(|| "/".into());
    if !std::path::Path::new(&workdir).is_dir() {
        return Err(format!(
            "working directory {workdir:?} does not exist in the image"
        ));
    }
    let prog = find_in_path(&cfg.argv[0], env)?;
    let cprog = CString::new(prog.clone()).map_err(|_| "NUL in program path".to_string())?;
    let argv: Vec<CString> = cfg
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let cwd = CString::new(workdir).map_err(|_| "NUL in workdir".to_string())?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let devnull = CString::new("/dev/null").expect("static");
    use std::os::fd::AsRawFd;
    let (ow, ew) = (out_w.as_raw_fd(), err_w.as_raw_fd());
    // SAFETY: after fork the child only calls async-signal-safe functions (dup2, setsid, chdir,
    // setgroups, setgid, setuid, open, execve, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            libc::setsid();
            let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
            libc::dup2(null, 0);
            libc::dup2(ow, 1);
            libc::dup2(ew, 2);
            let gid = ids.gid;
            if libc::chdir(cwd.as_ptr()) != 0
                || libc::setgroups(1, &gid) != 0
                || libc::setgid(ids.gid) != 0
                || libc::setuid(ids.uid) != 0
            {
                libc::_exit(126);
            }
            let mut sigs: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut sigs);
            libc::sigprocmask(libc::SIG_SETMASK, &sigs, std::ptr::null_mut());
            libc::execve(cprog.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            libc::_exit(127);
        }
    }
    drop(out_w);
    drop(err_w);
    Ok(Started {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}
